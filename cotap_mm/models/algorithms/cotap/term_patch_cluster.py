"""``loss_patch_cluster``: every student crop predicts the teacher's Sinkhorn codes of the region
it shares with each global crop (Leopart-style patch clustering)."""
from typing import Dict, List, Tuple

import torch
import torch.nn as nn

from ...losses.functional.sinkhorn import mean_code_entropy
from .step import CoTAPStep, CoTAPTerm, crop_geometry, patch_features, sinkhorn_codes

__all__ = ['PatchClusterTerm']


def _to_map(x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """[b, N, K] -> [b, K, h, w]."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], grid[0], grid[1])


class PatchClusterTerm(CoTAPTerm):
    """``loss_patch_cluster`` (``model.patch_cluster_loss``) and the logged
    ``patch_code_entropy``; leaves the teacher codes in ``step.patch_codes`` for the de-coupling
    terms and feeds the patch queue."""

    loss_attrs = ('patch_cluster_loss', )
    needs_local_crops = True
    needs_foreground = True

    def __call__(self, model: nn.Module, step: CoTAPStep) -> Dict[str, torch.Tensor]:
        pf = patch_features(model, step)
        G, bp, N, K = pf.s_scores.shape
        h, w = step.hw
        s_maps: List[torch.Tensor] = [_to_map(pf.s_scores[g], (h, w)) for g in range(G)]
        for patch_l, hw_l in step.local_patch:
            sel = patch_l if step.p_idx is None else patch_l[step.p_idx]
            s_maps.append(_to_map(model.patch_head(sel), hw_l))
        if len(s_maps) != step.V:
            raise RuntimeError(f'expected {step.V} student patch maps, got {len(s_maps)}')
        with torch.no_grad():
            flat = pf.t_z.reshape(-1, pf.t_z.shape[-1])  # teacher bottleneck vectors [G*bp*N, D]
            is_fg = pf.fg_p.reshape(-1).bool()
            # the queue keeps foreground vectors only (boolean indexing syncs: only when needed)
            foreground = (flat[is_fg] if model.patch_queue is not None
                          or model.patch_codes_on == 'foreground' else None)
            codes = None
            if step.clustering:
                if model.patch_codes_on == 'all':
                    codes = sinkhorn_codes(flat, pf.t_w, model.patch_queue, model.patch_sinkhorn)
                else:  # zero codes on the background
                    codes = flat.new_zeros((flat.shape[0], K))
                    codes[is_fg] = sinkhorn_codes(foreground, pf.t_w, model.patch_queue,
                                                  model.patch_sinkhorn)
                codes = codes.reshape(G, bp, h, w, K).permute(0, 1, 4, 2, 3)
            if model.patch_queue is not None:
                model.patch_queue.enqueue(foreground)
        step.patch_codes = codes
        dummy = step.zero + sum(m.sum() for m in s_maps) * 0.0
        if codes is None or bp == 0:
            out = dict(loss_patch_cluster=dummy)
        else:
            boxes, flips = crop_geometry(step.samples(step.p_pos), step.V, step.device)
            sizes = [tuple(v.shape[-2:]) for v in step.student_views]
            out = dict(loss_patch_cluster=model.patch_cluster_loss(
                s_maps, codes, pf.fg_p.float(), boxes, sizes, flips) + dummy)
        if codes is not None and model.training:  # logged, not summed
            out['patch_code_entropy'] = mean_code_entropy(codes, dim=2)
        return out

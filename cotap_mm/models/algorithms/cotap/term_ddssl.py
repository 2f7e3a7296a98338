"""``loss_dc`` / ``loss_depos``: the de-coupling and de-positioning add-ons on CoTAP's filtered
patch features (arXiv 2303.16947), with the patch-cluster codes or a given dense loss as target."""
from functools import partial
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from ...losses.functional.cluster_prediction import soft_cross_entropy
from ...utils.region_pooling import box_pool_tokens
from .step import CoTAPStep, CoTAPTerm, split_batch

__all__ = ['DDSSLTerms', 'kept_code_cross_entropy', 'region_code_targets']


def kept_code_cross_entropy(student_scores: torch.Tensor, codes: torch.Tensor,
                            weights: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Patch-cluster cross-entropy of student scores against teacher codes on weighted tokens.

    ``mean over tokens t with weights[t] and codes[t] != 0 of
    -sum_k codes[t, k] log softmax(student_scores[t] / T)_k`` (:func:`soft_cross_entropy`);
    all-zero codes (background cells, regions without enough foreground) do not count. 0, still
    in the graph, when no token counts.

    Args:
        student_scores (Tensor): [..., K] student patch-head scores.
        codes (Tensor): [..., K] teacher codes (rows sum to 1 or are all zero; detached here).
        weights (Tensor): [...] bool or float, e.g. the kept tokens of the de-coupling rows.
        temperature (float): student temperature. Defaults to 0.1.

    Returns:
        Tensor: float32 scalar.
    """
    if tuple(weights.shape) != tuple(student_scores.shape[:-1]):
        raise ValueError(f'weights must be {tuple(student_scores.shape[:-1])} (scores without '
                         f'the class dim), got {tuple(weights.shape)}')
    valid = weights.detach().float() * (codes.detach().float().sum(dim=-1) > 1e-6).float()
    return soft_cross_entropy(student_scores, codes, temperature, valid)


def region_code_targets(codes: torch.Tensor, fg: torch.Tensor, hw: Sequence[int],
                        boxes: torch.Tensor, fg_threshold: float = 0.5) -> torch.Tensor:
    """Code target of a box region, as :class:`PatchClusterLoss` pools a cell.

    Codes and foreground are box-pooled (:func:`box_pool_tokens`); the pooled codes are
    renormalised to sum 1; regions whose foreground fraction is below ``fg_threshold`` (or
    without code mass) get an all-zero target, i.e. no loss.

    Args:
        codes (Tensor): [R, N, K] per-patch codes (zero on background), N = h * w.
        fg (Tensor): [R, N] bool or float foreground mask.
        hw (Sequence[int]): the patch grid (h, w).
        boxes (Tensor): [R, 4] ``(x1, y1, x2, y2)`` in patch units.
        fg_threshold (float): minimal foreground fraction. Defaults to 0.5.

    Returns:
        Tensor: [R, K] float32 targets (rows sum to 1 or are zero).
    """
    if fg.shape != codes.shape[:2]:
        raise ValueError(f'fg must be [R, N] = {tuple(codes.shape[:2])}, got {tuple(fg.shape)}')
    pooled = box_pool_tokens(torch.cat([codes.float(), fg.float()[..., None]], dim=-1), hw,
                             boxes)
    target, frac = pooled[:, :-1], pooled[:, -1]
    mass = target.sum(dim=-1, keepdim=True)
    keep = (frac >= fg_threshold) & (mass[:, 0] > 1e-6)
    return target / mass.clamp_min(1e-12) * keep[:, None].float()


class DDSSLTerms(CoTAPTerm):
    """``loss_dc`` (``model.decoupling``) and ``loss_depos`` (``model.depositioning``) on the
    extra student rows of the step; targets: the patch-cluster codes (``model.dense_loss`` None)
    or the teacher patch-head outputs through ``model.dense_loss`` (e.g. IBOTPatchLoss)."""

    def enabled(self, model: nn.Module) -> bool:
        return model.decoupling is not None or model.depositioning is not None

    def __call__(self, model: nn.Module, step: CoTAPStep) -> Dict[str, torch.Tensor]:
        G, B, hw = step.G, step.B, step.hw
        N = int(hw[0]) * int(hw[1])
        rows, n = step.extra, G * B
        E = rows.num_extra
        dc = rows.decoupling
        dc_patch = step.extra_patch[:G * E].reshape(G, E, N, -1) if dc is not None else None
        depos = [(g, dp, step.extra_patch[o - n:o - n + dp.images.shape[0]])
                 for g, o, dp in rows.depositioning]
        s_dc = model.patch_head(dc_patch) if dc_patch is not None else None  # [G, E, N, K]
        if model.dense_loss is None:
            return self._code_targets(model, step, s_dc, dc, depos, N)
        return self._dense_loss_targets(model, step, s_dc, dc, depos)

    @staticmethod
    def _code_targets(model: nn.Module, step: CoTAPStep, s_dc, dc, depos: List[Tuple],
                      N: int) -> Dict[str, torch.Tensor]:
        G, B, hw, zero, codes = step.G, step.B, step.hw, step.zero, step.patch_codes
        out: Dict[str, torch.Tensor] = {}
        fn = partial(kept_code_cross_entropy,
                     temperature=float(getattr(model.patch_cluster_loss, 'student_temp', 0.1)))
        with torch.no_grad():
            codes_t = None if codes is None else codes.permute(0, 1, 3, 4, 2).reshape(
                G, codes.shape[1], N, codes.shape[2])  # [G, bp, N, K]
            if codes_t is not None and model.patch_codes_on == 'all':
                # these terms train foreground tokens only: zero codes on the background
                fg_t = split_batch(step.fg, G, B, step.p_idx).reshape(G, -1, N, 1)
                codes_t = codes_t * fg_t.to(codes_t.dtype)
        if model.decoupling is not None:
            if s_dc is None:
                out['loss_dc'] = zero
            elif codes_t is None:
                out['loss_dc'] = zero + s_dc.sum() * 0.0
            else:
                out['loss_dc'] = model.decoupling.loss(fn, s_dc, codes_t, dc) + zero
        if model.depositioning is not None:
            if not depos:
                out['loss_depos'] = zero
            else:
                s_reg = torch.stack([box_pool_tokens(model.patch_head(p), hw, dp.dst_boxes)
                                     for _, dp, p in depos])  # [G', K, K_proto]
                if codes_t is None:
                    out['loss_depos'] = zero + s_reg.sum() * 0.0
                else:
                    thr = float(getattr(model.patch_cluster_loss, 'fg_threshold', 0.5))
                    with torch.no_grad():
                        fg_p = split_batch(step.fg, G, B, step.p_idx).reshape(G, -1, N)
                        t_reg = torch.stack([
                            region_code_targets(codes_t[g, dp.source_index],
                                                fg_p[g, dp.source_index], hw, dp.src_boxes,
                                                thr) for g, dp, _ in depos])
                    out['loss_depos'] = model.depositioning.loss(fn, s_reg, t_reg) + zero
        return out

    @staticmethod
    def _dense_loss_targets(model: nn.Module, step: CoTAPStep, s_dc, dc,
                            depos: List[Tuple]) -> Dict[str, torch.Tensor]:
        G, B, hw, zero = step.G, step.B, step.hw, step.zero
        out: Dict[str, torch.Tensor] = {}
        with torch.no_grad():
            t_patch_p = split_batch(step.t_patch, G, B, step.p_idx)  # [G, bp, N, 2C]
            t_scores = model.teacher['patch_head'](t_patch_p)  # [G, bp, N, K]
        if model.decoupling is not None:
            out['loss_dc'] = zero if s_dc is None else (
                model.decoupling.loss(model.dense_loss.cross_entropy, s_dc, t_scores, dc) + zero)
        if model.depositioning is not None:
            if not depos:
                out['loss_depos'] = zero
            else:
                s_reg = torch.stack([box_pool_tokens(p, hw, dp.dst_boxes) for _, dp, p in depos])
                with torch.no_grad():
                    t_reg = torch.stack([box_pool_tokens(t_patch_p[g, dp.source_index], hw,
                                                         dp.src_boxes) for g, dp, _ in depos])
                    t_reg = model.teacher['patch_head'](t_reg)
                out['loss_depos'] = model.depositioning.loss(
                    model.dense_loss.cross_entropy, model.patch_head(s_reg), t_reg) + zero
        if t_scores.numel():
            model.dense_loss.step(t_scores)
        return out

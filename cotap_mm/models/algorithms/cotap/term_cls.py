"""The CLS terms: ``loss_cls_cluster`` (teacher Sinkhorn codes of the global crops predicted by
every student crop), ``loss_cls_neighbor`` (the partner's codes) and the optional DINO
``loss_cls``."""
from typing import Dict

import torch
import torch.nn as nn

from ...losses.dino_cls_loss import collapse_log_vars
from ...losses.functional.sinkhorn import mean_code_entropy
from .step import CoTAPStep, CoTAPTerm, find_partners, head_embed, loss_enabled, sinkhorn_codes, split_batch

__all__ = ['ClsTerms']


class ClsTerms(CoTAPTerm):
    """The terms on the CLS outputs of the CLS sub-batch, each on when its loss is
    (``model.cls_loss``, ``model.cls_cluster_loss``, ``model.cls_neighbor_loss``); the codes feed
    the CLS queue and are logged as ``cls_code_entropy``."""

    loss_attrs = ('cls_loss', 'cls_cluster_loss', 'cls_neighbor_loss')
    needs_local_crops = True

    def __call__(self, model: nn.Module, step: CoTAPStep) -> Dict[str, torch.Tensor]:
        on = {k: loss_enabled(getattr(model, k)) for k in self.loss_attrs}
        G, B, bc, zero = step.G, step.B, step.bc, step.zero
        s_cls_all = torch.cat(step.cls_views)  # [V', B, 2C]
        Vc = s_cls_all.shape[0]
        s_logits = model.cls_head(s_cls_all if step.c_idx is None else s_cls_all[:, step.c_idx])
        with torch.no_grad():
            t_cls_c = split_batch(step.t_cls_g, G, B, step.c_idx)  # [G, bc, 2C]
        out: Dict[str, torch.Tensor] = {}
        if on['cls_loss']:
            if bc == 0:
                out['loss_cls'] = zero
            else:
                with torch.no_grad():
                    t_logits = model.teacher['cls_head'](t_cls_c)
                out['loss_cls'] = model.cls_loss(s_logits, t_logits, list(range(Vc)),
                                                 list(range(G)))
                out.update(collapse_log_vars(model.cls_loss, 'cls_'))  # logged only
        if not (on['cls_cluster_loss'] or on['cls_neighbor_loss']):
            return out
        codes = None
        with torch.no_grad():
            z, weight = head_embed(model.teacher['cls_head'], t_cls_c)  # [G, bc, D]
            flat = z.reshape(-1, z.shape[-1])
            if step.clustering:
                codes = sinkhorn_codes(flat, weight, model.cls_queue,
                                       model.cls_sinkhorn).reshape(G, bc, weight.shape[0])
            if model.cls_queue is not None:
                model.cls_queue.enqueue(flat)
        if codes is not None and model.training:  # logged, not summed
            out['cls_code_entropy'] = mean_code_entropy(codes)
        ready = codes is not None and bc > 0
        if on['cls_cluster_loss']:
            out['loss_cls_cluster'] = (
                model.cls_cluster_loss(s_logits, codes, list(range(Vc)), list(range(G)))
                if ready else zero + s_logits.sum() * 0.0)
        if on['cls_neighbor_loss']:
            if ready:
                with torch.no_grad():
                    partner = find_partners(t_cls_c.float().mean(dim=0), step.data_samples,
                                            step.c_pos, model.partner_key, model.source_key)
                s_nb = s_logits[:G] if model.cls_neighbor_views == 'global' else s_logits
                out['loss_cls_neighbor'] = model.cls_neighbor_loss(s_nb, codes, partner)
            else:
                out['loss_cls_neighbor'] = zero + s_logits.sum() * 0.0
        return out

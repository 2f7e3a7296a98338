"""``loss_cotap``: CoTAP's ranking of patch correspondences with the continuous-target AP loss."""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .pair_selection import (build_similarity_items, gather_tokens, negative_partners, pool_views,
                             random_derangements, topk_foreground_indices)
from .step import CoTAPStep, CoTAPTerm, find_partners, patch_features, ranking_anchors, split_batch

__all__ = ['RankingTerm', 'ranking_loss']


def ranking_loss(loss: nn.Module, s_scores: torch.Tensor, t_scores: torch.Tensor,
                 fg: torch.Tensor, partner: torch.Tensor, anchors: Optional[torch.Tensor],
                 hw: Tuple[int, int], G: int, B: int, pool_scales: Sequence[int], topk: int,
                 num_random: int) -> torch.Tensor:
    """Mean over ``pool_scales`` of ``loss(student items, teacher items, is_random)``.

    At each scale the patch-head maps of the G global crops and the teacher foreground are
    pooled to ``ks x ks``, the ``topk`` most foreground cells of each image kept, and every anchor's
    cells compared with its partner's and with those of ``num_random`` other anchors' partners
    (:mod:`.pair_selection`).

    Args:
        loss (nn.Module): :class:`ContinuousAPLoss`.
        s_scores, t_scores (Tensor): student / teacher patch scores [G*B, N, K] (view-major).
        fg (Tensor): teacher foreground [G*B, N].
        partner (LongTensor): [B] partner of each image.
        anchors (LongTensor, optional): the images ranked (None: all).
        hw, G, B: patch grid, global crops, images.
        pool_scales, topk, num_random: as :class:`CoTAP`.
    """
    h, w = int(hw[0]), int(hw[1])
    for ks in pool_scales:
        if ks > min(h, w):
            raise ValueError(f'pool_scales {tuple(pool_scales)} must not exceed the patch grid '
                             f'{(h, w)} of the global crops')
        if topk > G * ks * ks:
            raise ValueError(f'topk={topk} exceeds the {G * ks * ks} pooled cells at scale {ks}')
    A = B if anchors is None else int(anchors.numel())
    if A < 1:
        raise ValueError('loss_cotap found no anchor in the patch sub-batch (every sample is a '
                         'loaded neighbour): check the data samples\' is_neighbor')
    with torch.no_grad():
        if A == 1:  # no other anchor: its own partner, as the release's permutation gives
            perms = torch.zeros(num_random, 1, dtype=torch.long, device=partner.device)
        else:
            perms = random_derangements(A, num_random, device=partner.device)
        negatives = negative_partners(partner, perms, anchors)

    def to_maps(x: torch.Tensor) -> torch.Tensor:  # [G*B, N, D] -> [B, G, D, h, w]
        return x.reshape(G, B, h, w, x.shape[-1]).permute(1, 0, 4, 2, 3)

    s_maps, t_maps = to_maps(s_scores.float()), to_maps(t_scores.float())
    m_maps = to_maps(fg.float().reshape(G * B, h * w, 1))
    terms = []
    for ks in pool_scales:
        idx = topk_foreground_indices(pool_views(m_maps, ks)[..., 0], topk)
        s_tok = gather_tokens(pool_views(s_maps, ks), idx)
        with torch.no_grad():
            t_tok = gather_tokens(pool_views(t_maps, ks), idx)
            t_sim, is_random = build_similarity_items(t_tok, partner, negatives, anchors)
        s_sim, _ = build_similarity_items(s_tok, partner, negatives, anchors)
        terms.append(loss(s_sim, t_sim, is_random))
    return torch.stack(terms).mean()


class RankingTerm(CoTAPTerm):
    """``loss_cotap`` of the patch sub-batch (``model.cotap_loss``)."""

    loss_attrs = ('cotap_loss', )
    needs_foreground = True

    def __call__(self, model: nn.Module, step: CoTAPStep) -> Dict[str, torch.Tensor]:
        if step.bp == 0:
            return dict(loss_cotap=step.zero)
        G, B, bp = step.G, step.B, step.bp
        pf = patch_features(model, step)
        with torch.no_grad():
            t_scores = pf.t_z @ pf.t_w.t()
            emb = split_batch(step.t_cls_g, G, B, step.p_idx).float().mean(dim=0)
            partner = find_partners(emb, step.data_samples, step.p_pos, model.partner_key,
                                    model.source_key)
            anchors = None if model.rank_all_images else ranking_anchors(
                step.data_samples, step.p_pos, step.device)
        return dict(loss_cotap=ranking_loss(
            model.cotap_loss, pf.s_scores.flatten(0, 1), t_scores.flatten(0, 1),
            pf.fg_p.flatten(0, 1), partner, anchors, step.hw, G, bp, model.pool_scales,
            model.topk, model.num_random))

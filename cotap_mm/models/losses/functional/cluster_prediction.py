"""Cross-entropy of student predictions against (Sinkhorn) cluster codes.

CoTAP (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_) trains its
clustering terms SwAV-style (`arXiv 2006.09882 <https://arxiv.org/abs/2006.09882>`_): the student
predicts the teacher's soft codes of *another* view with ``log_softmax(scores / T)``.

* :func:`soft_cross_entropy` — masked mean of ``-sum_k q_k log softmax(s / T)_k``.
* :func:`pairwise_mean_cross_entropy` — the same, averaged per crop pair, then over pairs
  (``loss_patch_cluster``).
* :func:`cross_view_code_loss` — all (student crop, teacher crop) pairs of different crops of the
  same image (``loss_cls_cluster``).
* :func:`neighbor_code_loss` — the partner image's codes as targets for all crop pairs
  (``loss_cls_neighbor``).
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .crop_pairs import different_crop_pairs

__all__ = [
    'soft_cross_entropy', 'pairwise_mean_cross_entropy', 'cross_view_code_loss',
    'neighbor_code_loss'
]


def soft_cross_entropy(student_logits: torch.Tensor,
                       targets: torch.Tensor,
                       temperature: float = 0.1,
                       mask: Optional[torch.Tensor] = None,
                       dim: int = -1) -> torch.Tensor:
    """Mean over items of ``-sum_k targets_k * log_softmax(student_logits / T)_k``.

    Args:
        student_logits (Tensor): [..., K, ...] scores (K along ``dim``).
        targets (Tensor): same shape, probabilities along ``dim`` (detached here).
        temperature (float): student temperature T > 0. Defaults to 0.1.
        mask (Tensor, optional): bool/float weights of the items, the shape of ``student_logits``
            without ``dim``. None: all items count. Defaults to None.
        dim (int): class dimension. Defaults to -1.

    Returns:
        Tensor: float32 scalar: the (weighted) mean over items; ``0 * logits.sum()`` (zero,
        still in the graph) when no item has a positive weight.
    """
    if student_logits.shape != targets.shape:
        raise ValueError(f'student_logits and targets must have the same shape, got '
                         f'{tuple(student_logits.shape)} and {tuple(targets.shape)}')
    if not temperature > 0:
        raise ValueError(f'temperature must be > 0, got {temperature!r}')
    logp = F.log_softmax(student_logits.float() / temperature, dim=dim)
    ce = -(targets.detach().float() * logp).sum(dim=dim)
    if mask is None:
        return ce.mean() if ce.numel() else student_logits.float().sum() * 0.0
    if mask.shape != ce.shape:
        raise ValueError(f'mask must have shape {tuple(ce.shape)} (logits without dim {dim}), '
                         f'got {tuple(mask.shape)}')
    w = mask.detach().float()
    total = w.sum()
    if float(total) <= 0:
        return student_logits.float().sum() * 0.0
    return (ce * w).sum() / total


def pairwise_mean_cross_entropy(student_logits: torch.Tensor,
                                targets: torch.Tensor,
                                temperature: float,
                                mask: torch.Tensor) -> torch.Tensor:
    """Masked cross-entropy averaged within each crop pair, then over the pairs.

    ``mean_p [sum_{b,i,j} m * ce / max(sum_{b,i,j} m, 1)]`` with ``ce = -sum_k targets_k
    log_softmax(student_logits / T)_k``: a pair without a counted cell contributes 0 and still
    counts in the mean over pairs.

    Args:
        student_logits (Tensor): [P, B, K, S, S] pooled student scores of P crop pairs.
        targets (Tensor): same shape, probabilities along K (detached here).
        temperature (float): student temperature T > 0.
        mask (Tensor): [P, B, S, S] bool or float cell weights.

    Returns:
        Tensor: float32 scalar (0, still in the graph, when no cell counts).
    """
    if student_logits.dim() != 5 or student_logits.shape != targets.shape:
        raise ValueError(f'student_logits and targets must both be [P, B, K, S, S], got '
                         f'{tuple(student_logits.shape)} and {tuple(targets.shape)}')
    if not temperature > 0:
        raise ValueError(f'temperature must be > 0, got {temperature!r}')
    P, B, _, S1, S2 = student_logits.shape
    if tuple(mask.shape) != (P, B, S1, S2):
        raise ValueError(f'mask must be [P, B, S, S] = {(P, B, S1, S2)}, got {tuple(mask.shape)}')
    logp = F.log_softmax(student_logits.float() / temperature, dim=2)
    ce = -(targets.detach().float() * logp).sum(dim=2)  # [P, B, S, S]
    w = mask.detach().float()
    per_pair = (ce * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1.0)
    return per_pair.mean() if P else student_logits.float().sum() * 0.0


def _check_views(student_logits: torch.Tensor, codes: torch.Tensor) -> None:
    if student_logits.dim() != 3 or codes.dim() != 3:
        raise ValueError('student_logits must be [V, B, K] and codes [G, B, K], got '
                         f'{tuple(student_logits.shape)} and {tuple(codes.shape)}')
    if student_logits.shape[1:] != codes.shape[1:]:
        raise ValueError('student_logits and codes must agree in [B, K], got '
                         f'{tuple(student_logits.shape)} and {tuple(codes.shape)}')


def cross_view_code_loss(student_logits: torch.Tensor,
                         codes: torch.Tensor,
                         temperature: float = 0.1,
                         student_view_ids: Optional[Sequence[int]] = None,
                         code_view_ids: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Swapped prediction: every student crop predicts the codes of every *other* crop.

    Mean over the pairs ``(t, s)`` with ``crop(s) != crop(t)`` of
    ``mean_b soft_CE(student[s, b], codes[t, b])``.

    Args:
        student_logits (Tensor): [V, B, K] student scores of all crops.
        codes (Tensor): [G, B, K] teacher codes of the target crops (rows sum to 1).
        temperature (float): student temperature. Defaults to 0.1.
        student_view_ids (Sequence[int], optional): crop index of each student view; defaults to
            ``range(V)``.
        code_view_ids (Sequence[int], optional): crop index of each code view; defaults to
            ``range(G)`` (the global crops come first).

    Returns:
        Tensor: float32 scalar.
    """
    _check_views(student_logits, codes)
    pairs = different_crop_pairs(student_logits.shape[0], codes.shape[0], student_view_ids,
                                 code_view_ids, target='code')
    terms = [soft_cross_entropy(student_logits[si], codes[ti], temperature) for ti, si in pairs]
    return torch.stack(terms).mean()


def neighbor_code_loss(student_logits: torch.Tensor,
                       codes: torch.Tensor,
                       partner: torch.Tensor,
                       temperature: float = 0.2) -> torch.Tensor:
    """Image-level neighbour consistency: anchor ``u`` predicts the codes of its partner.

    ``mean over (s, t, u)`` of ``soft_CE(student[s, u], codes[t, partner[u]])`` over all V student
    crops ``s`` of ``u`` and all G code crops ``t`` of ``partner[u]``. With symmetric partners
    (``partner[partner[u]] == u``, as ``neighbor_index`` from the neighbour collate) this is the
    official "and vice versa"; with retrieved (possibly asymmetric) partners every image is an
    anchor once.

    Args:
        student_logits (Tensor): [V, B, K] student scores.
        codes (Tensor): [G, B, K] teacher codes.
        partner (LongTensor): [B] batch position of each image's partner.
        temperature (float): student temperature. Defaults to 0.2.

    Returns:
        Tensor: float32 scalar.
    """
    _check_views(student_logits, codes)
    B = student_logits.shape[1]
    partner = torch.as_tensor(partner, dtype=torch.long)
    # the values are checked where that costs no device sync (a partner given on the CPU)
    if partner.shape != (B, ) or (partner.device.type == 'cpu' and bool(
            ((partner < 0) | (partner >= B)).any())):
        raise ValueError(f'partner must be [{B}] batch positions in [0, {B}), got '
                         f'{partner.tolist()}')
    partner = partner.to(codes.device)
    V, G = student_logits.shape[0], codes.shape[0]
    target = codes[:, partner]  # [G, B, K]: partner's codes at the anchor's position
    s = student_logits.unsqueeze(1).expand(V, G, *student_logits.shape[1:])
    t = target.unsqueeze(0).expand(V, G, *target.shape[1:])
    return soft_cross_entropy(s, t, temperature)

"""Pure functions that build CoTAP's similarity items.

CoTAP: "Semantic Concentration for Self-Supervised Dense Representations Learning",
https://arxiv.org/abs/2509.09429.

Pipeline for one pooling scale ``ks``:

1. :func:`retrieve_partners` — partner ``v`` of each image ``u`` (in-batch retrieval when no k-NN
   neighbour is given).
2. :func:`random_derangements` + :func:`negative_partners` — for each of ``R`` random other
   anchors ``r``, the image whose tokens serve as "random" items (``partner[r]``).
3. :func:`pool_views` + :func:`topk_foreground_indices` + :func:`gather_tokens` — pool the
   patch-head maps of the global crops and the teacher foreground masks to ``ks x ks``, stack the
   crops (``G * ks^2`` tokens), keep the ``k`` tokens with the largest pooled mask value.
4. :func:`build_similarity_items` — cosine similarities of ``u``'s tokens against the partner's
   and the random images' tokens, flattened into one list with the ``is_random`` flags.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    'retrieve_partners', 'random_derangements', 'negative_partners', 'pool_views',
    'topk_foreground_indices', 'gather_tokens', 'build_similarity_items'
]


def retrieve_partners(embeddings: torch.Tensor) -> torch.Tensor:
    """Index of each image's most similar *other* image of the batch (cosine similarity).

    Args:
        embeddings (Tensor): [B, D] image embeddings (CoTAP uses the teacher's 2C-dim CLS output
            averaged over the global crops), B >= 2.

    Returns:
        LongTensor: [B], ``partner[u] = argmax_{v != u} cos(e_u, e_v)`` (ties: lowest index).
    """
    if embeddings.dim() != 2:
        raise ValueError(f'embeddings must be [B, D], got shape {tuple(embeddings.shape)}')
    B = embeddings.shape[0]
    if B < 2:
        raise ValueError(f'in-batch partner retrieval needs a batch of at least 2 images, got {B}')
    with torch.no_grad():
        e = F.normalize(embeddings.detach().float(), dim=1)
        sim = e @ e.t()
        sim.fill_diagonal_(-float('inf'))
        return sim.argmax(dim=1)


def random_derangements(batch_size: int,
                        num: int,
                        generator: Optional[torch.Generator] = None,
                        device: Optional[torch.device] = None,
                        max_tries: int = 100) -> torch.Tensor:
    """``num`` random permutations of ``range(batch_size)`` without fixed points.

    Each row is drawn uniformly among derangements by rejection sampling (expected ~e tries);
    after ``max_tries`` rejections a uniformly random non-zero cyclic shift is used.

    Args:
        batch_size (int): B >= 2.
        num (int): R, number of permutations (CoTAP: 5).
        generator (torch.Generator, optional): CPU generator for reproducibility.
        device (torch.device, optional): device of the result.
        max_tries (int): rejection-sampling budget per row. Defaults to 100.

    Returns:
        LongTensor: [R, B], ``perm[r, u] != u``.
    """
    if not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f'batch_size must be an int >= 2 for derangements, got {batch_size!r}')
    if not isinstance(num, int) or num < 0:
        raise ValueError(f'num must be a non-negative int, got {num!r}')
    ar = torch.arange(batch_size)
    rows = []
    for _ in range(num):
        for _ in range(max_tries):
            p = torch.randperm(batch_size, generator=generator)
            if not bool((p == ar).any()):
                break
        else:
            shift = int(torch.randint(1, batch_size, (1, ), generator=generator))
            p = (ar + shift) % batch_size
        rows.append(p)
    out = torch.stack(rows) if rows else torch.zeros(0, batch_size, dtype=torch.long)
    return out.to(device) if device is not None else out


def negative_partners(partner: torch.Tensor, perms: torch.Tensor,
                      anchors: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Images whose tokens are the "random" items of each anchor: the partners of ``R`` random
    other anchors, ``partner[anchors[perm[r, a]]]``.

    With in-batch retrieval the partner of a random anchor can be the anchor itself (mutual
    nearest neighbours); such entries are replaced by the random anchor (never the anchor itself).

    Args:
        partner (LongTensor): [B] partner index of each image.
        perms (LongTensor): [R, A] derangements of ``range(A)`` (:func:`random_derangements`).
        anchors (LongTensor, optional): [A] batch positions of the anchors; None: every image
            (A = B). Defaults to None.

    Returns:
        LongTensor: [R, A] batch positions, never equal to the anchor's.
    """
    if anchors is None:
        anchors = torch.arange(partner.shape[0], device=partner.device)
    if (partner.dim() != 1 or anchors.dim() != 1 or perms.dim() != 2
            or perms.shape[1] != anchors.shape[0]):
        raise ValueError(f'partner must be [B], anchors [A] and perms [R, A], got '
                         f'{tuple(partner.shape)}, {tuple(anchors.shape)} and '
                         f'{tuple(perms.shape)}')
    random_anchor = anchors[perms]
    neg = partner[random_anchor]
    return torch.where(neg == anchors.expand_as(perms), random_anchor, neg)


def pool_views(maps: torch.Tensor, ks: int) -> torch.Tensor:
    """Adaptive-average-pool per-crop maps to ``ks x ks`` and stack the crops' cells.

    Args:
        maps (Tensor): [B, G, D, h, w] (G crops of each image, D channels; D = 1 for masks).
        ks (int): output grid size.

    Returns:
        Tensor: [B, G * ks * ks, D], crop-major then row-major cells.
    """
    if maps.dim() != 5:
        raise ValueError(f'maps must be [B, G, D, h, w], got shape {tuple(maps.shape)}')
    if not isinstance(ks, int) or ks < 1:
        raise ValueError(f'ks must be a positive int, got {ks!r}')
    B, G, D, h, w = maps.shape
    pooled = F.adaptive_avg_pool2d(maps.reshape(B * G, D, h, w), ks)  # [B*G, D, ks, ks]
    return pooled.reshape(B, G, D, ks * ks).permute(0, 1, 3, 2).reshape(B, G * ks * ks, D)


def topk_foreground_indices(pooled_mask: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` cells with the largest pooled foreground value per image.

    Ties are broken by the lower cell index (stable descending sort), so the result is
    deterministic.

    Args:
        pooled_mask (Tensor): [B, L] pooled (fractional) foreground masks.
        k (int): 1 <= k <= L (CoTAP: 5).

    Returns:
        LongTensor: [B, k].
    """
    if pooled_mask.dim() != 2:
        raise ValueError(f'pooled_mask must be [B, L], got shape {tuple(pooled_mask.shape)}')
    L = pooled_mask.shape[1]
    if not isinstance(k, int) or not 1 <= k <= L:
        raise ValueError(f'k must be an int in [1, {L}] (number of pooled cells), got {k!r}')
    order = torch.sort(pooled_mask.detach().float(), dim=1, descending=True, stable=True)[1]
    return order[:, :k]


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tokens[b, index[b, j]]``: [B, L, D] x [B, k] -> [B, k, D]."""
    if tokens.dim() != 3 or index.dim() != 2 or index.shape[0] != tokens.shape[0]:
        raise ValueError(f'tokens must be [B, L, D] and index [B, k], got {tuple(tokens.shape)} '
                         f'and {tuple(index.shape)}')
    return tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))


def build_similarity_items(tokens: torch.Tensor, partner: torch.Tensor,
                           negatives: torch.Tensor,
                           anchors: Optional[torch.Tensor] = None
                           ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities between each anchor's tokens and its partner's / random images' tokens.

    For anchor ``u`` with selected tokens ``x_u`` [k, D]: the ``k x k`` cosines against
    ``x_{partner[u]}`` (``is_random=False``) followed by, for each ``r < R``, the ``k x k``
    cosines against ``x_{negatives[r, a]}`` (``is_random=True``): ``k^2 (1 + R)`` items per
    anchor (150 for k = 5, R = 5), all anchors concatenated.

    Args:
        tokens (Tensor): [B, k, D] selected tokens (not necessarily normalised).
        partner (LongTensor): [B].
        negatives (LongTensor): [R, A] (:func:`negative_partners`).
        anchors (LongTensor, optional): [A] batch positions of the anchors; None: every image.
            Defaults to None.

    Returns:
        tuple: ``sim`` [A * k^2 * (1 + R)] and ``is_random`` (bool, same shape). Order: anchor,
        then target block (partner, random 0..R-1), then anchor token, then target token.
    """
    if tokens.dim() != 3:
        raise ValueError(f'tokens must be [B, k, D], got shape {tuple(tokens.shape)}')
    B, k, _ = tokens.shape
    if anchors is None:
        anchors = torch.arange(B, device=tokens.device)
    A = anchors.shape[0]
    if partner.shape != (B, ) or negatives.dim() != 2 or negatives.shape[1] != A:
        raise ValueError(f'partner must be [{B}] and negatives [R, {A}], got '
                         f'{tuple(partner.shape)} and {tuple(negatives.shape)}')
    x = F.normalize(tokens, dim=-1)
    targets = torch.cat([partner[anchors][None], negatives], dim=0).t()  # [A, 1+R]
    y = x[targets]  # [A, 1+R, k, D]
    sim = torch.einsum('bid,brjd->brij', x[anchors], y)  # [A, 1+R, k, k]
    is_random = torch.ones_like(sim, dtype=torch.bool)
    is_random[:, 0] = False
    return sim.reshape(-1), is_random.reshape(-1)

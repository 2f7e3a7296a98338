"""Feature search of SCFS: a pooled query re-weights every position of a key feature map.

SCFS: Song et al., "Semantics-Consistent Feature Search for Self-Supervised Visual Representation
Learning", ICCV 2023, https://arxiv.org/abs/2212.06486 (official code: github.com/skyoux/scfs).
"""
from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ['search_weights', 'feature_search', 'SEARCH_WEIGHTINGS']

#: Accepted values of ``weighting``.
SEARCH_WEIGHTINGS = ('cosine', 'softmax')


def _check_inputs(query: torch.Tensor, key_map: torch.Tensor) -> None:
    if query.dim() != 2:
        raise ValueError(f'query must be [B, C], got shape {tuple(query.shape)}')
    if key_map.dim() != 4:
        raise ValueError(f'key_map must be [B, C, h, w], got shape {tuple(key_map.shape)}')
    if query.shape[0] != key_map.shape[0] or query.shape[1] != key_map.shape[1]:
        raise ValueError('query [B, C] and key_map [B, C, h, w] must agree in B and C, got '
                         f'{tuple(query.shape)} and {tuple(key_map.shape)}')


def search_weights(query: torch.Tensor,
                   key_map: torch.Tensor,
                   weighting: str = 'cosine',
                   temperature: float = 0.1,
                   eps: float = 1e-12) -> torch.Tensor:
    """Search map ``A`` of a query over every position of a key map.

    With ``q = query / ||query||`` and ``k(p) = key_map[:, :, p] / ||key_map[:, :, p]||`` (L2 over
    channels, ``F.normalize`` with ``eps``):

    * ``'cosine'`` (official SCFS code): ``A(p) = <q, k(p)>``, the raw
      cosine similarity in [-1, 1]; no softmax, no top-k, no threshold.
    * ``'softmax'`` (our option, not in the official code): ``A(p) = softmax_p(<q, k(p)> / T)``
      over the ``h * w`` positions, so that ``sum_p A(p) = 1``.

    Args:
        query (Tensor): [B, C] pooled query features (need not be normalised).
        key_map (Tensor): [B, C, h, w] key feature maps.
        weighting (str): 'cosine' or 'softmax'. Defaults to 'cosine'.
        temperature (float): T of the 'softmax' weighting (> 0). Defaults to 0.1.
        eps (float): Norm floor of the L2-normalisations. Defaults to 1e-12.

    Returns:
        Tensor: [B, h, w] weights (float32 for low-precision inputs).
    """
    _check_inputs(query, key_map)
    if weighting not in SEARCH_WEIGHTINGS:
        raise ValueError(f'weighting must be one of {SEARCH_WEIGHTINGS}, got {weighting!r}')
    if weighting == 'softmax' and not temperature > 0:
        raise ValueError(f'temperature must be > 0, got {temperature!r}')
    B, C, h, w = key_map.shape
    dtype = torch.promote_types(query.dtype, torch.float32)
    q = F.normalize(query.to(dtype), dim=1, eps=eps)
    k = F.normalize(key_map.to(dtype).flatten(2), dim=1, eps=eps)  # [B, C, hw]
    sim = torch.einsum('bc,bcp->bp', q, k)
    if weighting == 'softmax':
        sim = F.softmax(sim / temperature, dim=1)
    return sim.reshape(B, h, w)


def feature_search(query: torch.Tensor,
                   key_map: torch.Tensor,
                   weighting: str = 'cosine',
                   temperature: float = 0.1,
                   eps: float = 1e-12) -> Tuple[torch.Tensor, torch.Tensor]:
    """SCFS feature search: the key map re-weighted by its similarity to the query.

    ``searched[b, :, p] = s * A[b, p] * key_map[b, :, p]`` with ``A`` from :func:`search_weights`
    and the *un-normalised* key map (``F'_lg,i = A_i ⊙ F'_g``, broadcast
    over channels). ``s = 1`` for ``'cosine'`` (official). For ``'softmax'``, ``s = h * w``, so that
    the mean over positions of ``searched`` -- what a head that global-average-pools sees -- is the
    attention-pooled key feature ``sum_p A(p) key_map[:, :, p]`` and the map keeps the scale of
    ``key_map`` (uniform weights give ``searched = key_map``).

    In SCFS the query is the L2-normalised global-average-pooled *student* feature of a local crop
    and the key map the *teacher* feature map of the first global crop, at the same backbone
    stage; the whole search runs without gradient (the caller detaches / uses ``no_grad``).

    Args:
        query (Tensor): [B, C] queries (one per key map; repeat the key map for several queries).
        key_map (Tensor): [B, C, h, w] key feature maps.
        weighting (str): 'cosine' (official) or 'softmax'. Defaults to 'cosine'.
        temperature (float): T of the 'softmax' weighting. Defaults to 0.1.
        eps (float): Norm floor. Defaults to 1e-12.

    Returns:
        tuple[Tensor, Tensor]: ``searched`` [B, C, h, w] (dtype of ``key_map``) and the weights
        ``A`` [B, h, w].
    """
    weights = search_weights(query, key_map, weighting, temperature, eps)
    h, w = key_map.shape[-2:]
    scale = float(h * w) if weighting == 'softmax' else 1.0
    searched = key_map * (weights * scale).unsqueeze(1).to(key_map.dtype)
    return searched, weights

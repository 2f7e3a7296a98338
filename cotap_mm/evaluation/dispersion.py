"""Over-dispersion of dense features: how tightly patches of one class / instance cluster.

CoTAP (https://arxiv.org/abs/2509.09429) names the failure it fixes "over-dispersion": patches of the
same instance or category scatter in feature space. The paper's own metric was not available to
us, so this module defines one, on L2-normalised patch features
``f_i = x_i / ||x_i||`` with patch labels ``y_i`` (and optionally instance ids ``o_i``):

* ``intra`` = mean cosine similarity ``f_i . f_j`` over pairs ``i != j`` with ``y_i = y_j``
  (across images). With ``S_c = sum_{i: y_i = c} f_i`` and ``n_c = |{i: y_i = c}|`` the mean over
  the ``n_c (n_c - 1)`` ordered pairs of class ``c`` is ``(||S_c||^2 - n_c) / (n_c (n_c - 1))``.
* ``inter`` = mean cosine over pairs with ``y_i != y_j``; for classes ``c != d`` the mean is
  ``S_c . S_d / (n_c n_d)``.
* ``dispersion = (1 - intra) / (1 - inter)``: the mean cosine *distance* between same-class patches
  relative to the one between different-class patches. Lower is better (0 = every class collapsed
  to one point; about 1 = classes no tighter than the whole feature cloud).
* With instance ids: ``intra_instance`` = the same mean over pairs from the same instance
  (``o_i = o_j``), and ``instance_dispersion = (1 - intra_instance) / (1 - inter)``. Instance ids
  must be unique across the whole set (combine image index and within-image id, see
  :func:`global_instance_ids`), so "same instance" means same object in the same image.

Averaging (``average``): ``'class'`` (default) first averages within each class (each class with
at least 2 patches counts once; ``inter`` averages over unordered class pairs), so a large
background class does not dominate; ``'pair'`` pools all pairs (each pair counts once). Both use
only the per-group sums ``S_c``: O(N C) time, no N x N matrix.

Patch labels come from pixel masks by majority vote inside each patch
(:func:`patch_majority_labels`).
"""
import math
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]


def _to_tensor(name: str, x: ArrayLike) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{name} must be a numpy array or torch.Tensor, got {type(x).__name__}')
    return x


def _group_sums(f: torch.Tensor, ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-group sums ``S_g`` ``[G, C]`` and counts ``n_g`` ``[G]`` for the unique ids."""
    _, inv = torch.unique(ids, return_inverse=True)
    g = int(inv.max()) + 1 if inv.numel() else 0
    sums = torch.zeros(g, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, inv, f)
    counts = torch.bincount(inv, minlength=g).to(f.dtype)
    return sums, counts


def _intra(sums: torch.Tensor, counts: torch.Tensor, average: str) -> Tuple[float, int]:
    """Mean same-group cosine (self pairs excluded) and the number of groups used."""
    keep = counts >= 2
    s, n = sums[keep], counts[keep]
    if n.numel() == 0:
        return float('nan'), 0
    sq = (s * s).sum(1)
    if average == 'class':
        return float(((sq - n) / (n * (n - 1))).mean()), int(n.numel())
    return float((sq - n).sum() / (n * (n - 1)).sum()), int(n.numel())


def _inter(sums: torch.Tensor, counts: torch.Tensor, average: str) -> float:
    """Mean cosine between members of different groups."""
    g = counts.numel()
    if g < 2:
        return float('nan')
    if average == 'class':
        means = sums / counts[:, None]
        gram = means @ means.t()
        off = gram.sum() - gram.diagonal().sum()
        return float(off / (g * (g - 1)))
    total = sums.sum(0)
    n = counts.sum()
    cross = (total * total).sum() - (sums * sums).sum()
    return float(cross / (n * n - (counts * counts).sum()))


def _ratio(intra: float, inter: float) -> float:
    if math.isnan(intra) or math.isnan(inter):
        return float('nan')
    den = 1.0 - inter
    if den <= 1e-12:
        return float('inf') if (1.0 - intra) > 1e-12 else float('nan')
    return (1.0 - intra) / den


def dispersion_stats(features: ArrayLike,
                     labels: ArrayLike,
                     instance_ids: Optional[ArrayLike] = None,
                     ignore_index: int = 255,
                     average: str = 'class',
                     eps: float = 1e-12) -> Dict[str, float]:
    """Over-dispersion statistics of patch features (definitions in the module docstring).

    Args:
        features (np.ndarray | Tensor): ``[N, C]`` patch features (normalised here).
        labels (np.ndarray | Tensor): ``[N]`` integer class of each patch; ``ignore_index``
            patches are dropped everywhere.
        instance_ids (np.ndarray | Tensor, optional): ``[N]`` integer instance id of each patch,
            unique across images; patches with id ``ignore_index`` are left out of the instance
            statistics. Defaults to None (no instance statistics).
        ignore_index (int): ignored label / instance id. Defaults to 255.
        average (str): ``'class'`` (default: each class / instance counts once) or ``'pair'``
            (all pairs pooled).
        eps (float): norm clamp of the L2 normalisation. Defaults to 1e-12.

    Returns:
        dict[str, float]: ``intra``, ``inter``, ``dispersion``, ``num_patches`` (kept),
        ``num_classes`` (classes with >= 2 patches used in ``intra``), and with ``instance_ids``
        also ``intra_instance``, ``instance_dispersion``, ``num_instances``. Undefined entries
        (e.g. ``inter`` with a single class) are nan.
    """
    if average not in ('class', 'pair'):
        raise ValueError(f"average must be 'class' or 'pair', got {average!r}")
    feats = _to_tensor('features', features)
    if not feats.is_floating_point():
        raise TypeError(f'features must be floating point, got dtype {feats.dtype}')
    if feats.ndim != 2:
        raise ValueError(f'features must be [N, C], got shape {tuple(feats.shape)}')
    labels = _to_tensor('labels', labels).to(feats.device)
    if labels.is_floating_point() or labels.ndim != 1 or labels.shape[0] != feats.shape[0]:
        raise ValueError(f'labels must be an integer [N] tensor with N={feats.shape[0]}, got '
                         f'dtype {labels.dtype} shape {tuple(labels.shape)}')
    feats = feats.double()
    f = feats / feats.norm(dim=1, keepdim=True).clamp_min(eps)
    keep = labels != ignore_index
    sums, counts = _group_sums(f[keep], labels[keep].long())
    intra, ncls = _intra(sums, counts, average)
    inter = _inter(sums, counts, average)
    out = dict(
        intra=intra,
        inter=inter,
        dispersion=_ratio(intra, inter),
        num_patches=int(keep.sum()),
        num_classes=ncls)
    if instance_ids is not None:
        inst = _to_tensor('instance_ids', instance_ids).to(feats.device)
        if inst.is_floating_point() or inst.ndim != 1 or inst.shape[0] != feats.shape[0]:
            raise ValueError(f'instance_ids must be an integer [N] tensor with N={feats.shape[0]},'
                             f' got dtype {inst.dtype} shape {tuple(inst.shape)}')
        keep_i = keep & (inst != ignore_index)
        s_i, n_i = _group_sums(f[keep_i], inst[keep_i].long())
        intra_i, ninst = _intra(s_i, n_i, average)
        out.update(
            intra_instance=intra_i,
            instance_dispersion=_ratio(intra_i, inter),
            num_instances=ninst)
    return out


def patch_majority_labels(masks: ArrayLike,
                          grid: Tuple[int, int],
                          ignore_index: int = 255,
                          min_purity: float = 0.0) -> torch.Tensor:
    """Majority label of every patch of a ``grid`` over pixel label maps.

    Masks whose size is not a multiple of the grid are first resized (nearest) to the next
    multiple. Ignore pixels do not vote; a patch with no valid pixel, or whose majority covers less
    than ``min_purity`` of its valid pixels, gets ``ignore_index``. Ties go to the smallest label.

    Args:
        masks (np.ndarray | Tensor): ``[N, H, W]`` integer labels (>= 0).
        grid (tuple[int, int]): patch grid ``(h, w)``.
        ignore_index (int): Defaults to 255.
        min_purity (float): minimum majority fraction in [0, 1]. Defaults to 0.

    Returns:
        Tensor: int64 ``[N, h, w]``.
    """
    m = _to_tensor('masks', masks)
    if m.is_floating_point() or m.ndim != 3:
        raise ValueError(f'masks must be an integer [N, H, W] array, got dtype {m.dtype} shape '
                         f'{tuple(m.shape)}')
    h, w = int(grid[0]), int(grid[1])
    if h < 1 or w < 1:
        raise ValueError(f'grid must be two positive ints, got {grid}')
    m = m.long()
    n, H, W = m.shape
    ph, pw = -(-H // h), -(-W // w)
    if (H, W) != (h * ph, w * pw):
        m = torch.nn.functional.interpolate(
            m[:, None].float(), size=(h * ph, w * pw), mode='nearest')[:, 0].long()
    blocks = m.reshape(n, h, ph, w, pw).permute(0, 1, 3, 2, 4).reshape(n * h * w, ph * pw)
    valid = blocks != ignore_index
    if (blocks[valid] < 0).any():
        raise ValueError('masks must be >= 0 (or ignore_index)')
    num = int(blocks[valid].max()) + 1 if valid.any() else 1
    vals = torch.where(valid, blocks, torch.full_like(blocks, num))
    counts = torch.zeros(blocks.shape[0], num + 1, dtype=torch.long, device=m.device)
    counts.scatter_add_(1, vals, torch.ones_like(vals))
    counts = counts[:, :num]
    top, arg = counts.max(1)
    nvalid = valid.sum(1)
    out = torch.where((nvalid > 0) & (top.double() >= min_purity * nvalid.double()), arg,
                      torch.full_like(arg, ignore_index))
    return out.reshape(n, h, w)


def global_instance_ids(instances: ArrayLike,
                        background: int = 0,
                        ignore_index: int = 255) -> torch.Tensor:
    """Make per-image instance ids unique across images: ``image_index * 256 + id``.

    Args:
        instances (np.ndarray | Tensor): ``[N, ...]`` per-image ids in ``[0, 255]``.
        background (int): id meaning "no instance"; mapped to ``ignore_index``. Defaults to 0.
        ignore_index (int): Defaults to 255 (kept as is).

    Returns:
        Tensor: int64, same shape.
    """
    x = _to_tensor('instances', instances).long()
    if x.ndim < 1:
        raise ValueError('instances must have a leading image dimension')
    img = torch.arange(x.shape[0], device=x.device).view(-1, *([1] * (x.ndim - 1)))
    out = img * 256 + x
    out = torch.where((x == background) | (x == ignore_index), torch.full_like(out, ignore_index),
                      out)
    return out

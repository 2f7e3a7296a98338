"""Unsupervised overclustering of frozen patch features (Leopart / NeCo / Hummingbird protocol).

Protocol (Leopart, `arXiv 2204.13101 <https://arxiv.org/abs/2204.13101>`_, Sec. 4; NeCo,
`arXiv 2408.11054 <https://arxiv.org/abs/2408.11054>`_; Hummingbird,
`arXiv 2306.01667 <https://arxiv.org/abs/2306.01667>`_): the last-layer patch features of the
*validation* images ``[N, D, h, w]`` are L2-normalised and clustered by k-means with ``K`` clusters
(K = number of classes, or K = 100 / 300 / 500 for overclustering); the cluster map of each image is
upsampled (nearest) to the label size; clusters are mapped to classes

* by **Hungarian matching** (one-to-one, only when ``K`` = number of classes): the assignment that
  maximises the number of pixels whose class equals the class of their cluster
  (``scipy.optimize.linear_sum_assignment``), or
* by **majority vote** (many-to-one, ``K`` >= number of classes, Leopart's ``many_to_one`` with
  ``precision_based=True``): every cluster takes the class most of its labelled pixels have;

and the mapped map is scored with the project's mIoU (:func:`~.linear_probe.confusion_matrix` over
the whole set, :func:`~.linear_probe.miou_from_confusion`; ``ignore_index`` pixels dropped). The
mapping is fitted on the labels it is scored on, as in the references (no training, no other split).

k-means (:func:`kmeans`) is plain torch: Lloyd iterations with the distances computed in chunks
of ``chunk_size`` points (CPU or GPU, on the features' device), k-means++ or random
initialisation drawn from a CPU ``torch.Generator`` seeded with ``seed`` (the same on every
device), empty clusters moved to the points farthest from their centroids, ``n_init`` restarts
keeping the lowest inertia. Leopart uses faiss' k-means; results differ by the initialisation
only.
"""
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .linear_probe import _as_long_tensor, confusion_matrix, miou_from_confusion

ArrayLike = Union[np.ndarray, torch.Tensor]

__all__ = [
    'pairwise_sq_dists', 'assign_to_centroids', 'update_centroids', 'kmeans_plusplus_init',
    'kmeans', 'cluster_class_counts', 'hungarian_mapping', 'majority_mapping', 'upsample_label_map',
    'overclustering_eval'
]

_INITS = ('k-means++', 'random')
_MATCHINGS = ('hungarian', 'majority')


def _check_points(name: str, x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 2:
        shape = tuple(x.shape) if hasattr(x, 'shape') else type(x).__name__
        raise ValueError(f'{name} must be a floating point [N, D] tensor, got {shape} '
                         f'{getattr(x, "dtype", "")}')
    return x


def _check_pos_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f'{name} must be a positive int, got {v!r}')
    return v


def pairwise_sq_dists(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``||x_i - c_k||^2`` (clamped at 0).

    Args:
        x (Tensor): ``[n, D]``.
        centroids (Tensor): ``[K, D]``.

    Returns:
        Tensor: ``[n, K]``.
    """
    d = (x * x).sum(1, keepdim=True) - 2.0 * (x @ centroids.t()) + (centroids * centroids).sum(1)
    return d.clamp_min_(0.0)


def assign_to_centroids(x: torch.Tensor, centroids: torch.Tensor,
                        chunk_size: int = 65536) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every point, ``chunk_size`` points at a time.

    Args:
        x (Tensor): ``[N, D]`` points.
        centroids (Tensor): ``[K, D]``.
        chunk_size (int): points per distance block (memory ``chunk_size x K``). Defaults to 65536.

    Returns:
        tuple[Tensor, Tensor]: assignments ``[N]`` int64 (ties: the lowest index) and the squared
        distance to the assigned centroid ``[N]``.
    """
    _check_pos_int('chunk_size', chunk_size)
    idx, dist = [], []
    for s in range(0, x.shape[0], chunk_size):
        d, i = pairwise_sq_dists(x[s:s + chunk_size], centroids).min(1)
        idx.append(i)
        dist.append(d)
    if not idx:
        return (torch.zeros(0, dtype=torch.long, device=x.device),
                torch.zeros(0, dtype=x.dtype, device=x.device))
    return torch.cat(idx), torch.cat(dist)


def update_centroids(x: torch.Tensor, assign: torch.Tensor,
                     num_clusters: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Means of the points of every cluster (sums in float64).

    Args:
        x (Tensor): ``[N, D]``.
        assign (Tensor): ``[N]`` cluster ids in ``[0, K)``.
        num_clusters (int): K.

    Returns:
        tuple[Tensor, Tensor]: centroids ``[K, D]`` (``x``'s dtype; rows of empty clusters are 0)
        and counts ``[K]`` int64.
    """
    sums = torch.zeros(num_clusters, x.shape[1], dtype=torch.float64, device=x.device)
    sums.index_add_(0, assign, x.double())
    counts = torch.bincount(assign, minlength=num_clusters)
    cent = sums / counts.clamp_min(1).unsqueeze(1).double()
    return cent.to(x.dtype), counts


def kmeans_plusplus_init(x: torch.Tensor, num_clusters: int, generator: torch.Generator,
                         chunk_size: int = 65536) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre is a point drawn with
    probability proportional to its squared distance to the nearest centre chosen so far.

    The draws use ``generator`` (a CPU generator) through an inverse-CDF look-up on ``x``'s device,
    so a seed gives the same centres on CPU and GPU up to float round-off.

    Args:
        x (Tensor): ``[N, D]``, ``N >= num_clusters``.
        num_clusters (int): K.
        generator (torch.Generator): CPU generator.
        chunk_size (int): points per distance block. Defaults to 65536.

    Returns:
        Tensor: ``[K, D]`` initial centroids (rows of ``x``).
    """
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = [first]
    _, best = assign_to_centroids(x, x[first:first + 1], chunk_size)
    best = best.double()
    for _ in range(1, num_clusters):
        cum = torch.cumsum(best, 0)
        total = float(cum[-1])
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        if total <= 0:  # every point sits on a centre already: pick any point not chosen yet
            free = torch.ones(n, dtype=torch.bool)
            free[chosen] = False
            cand = free.nonzero()[:, 0]
            nxt = int(cand[int(u * cand.numel())])
        else:
            target = torch.tensor([u * total], dtype=torch.float64, device=x.device)
            nxt = min(int(torch.searchsorted(cum, target, right=True)), n - 1)
        chosen.append(nxt)
        _, d = assign_to_centroids(x, x[nxt:nxt + 1], chunk_size)
        best = torch.minimum(best, d.double())
    return x[torch.as_tensor(chosen, device=x.device)].clone()


def _lloyd(x: torch.Tensor, cent: torch.Tensor, iters: int, tol: float,
           chunk_size: int) -> Tuple[torch.Tensor, torch.Tensor, float, int]:
    """Lloyd iterations from ``cent``; returns centroids, assignments, inertia, iterations run."""
    k = cent.shape[0]
    assign, dist = assign_to_centroids(x, cent, chunk_size)
    inertia = float(dist.double().sum())
    done = 0
    for done in range(1, iters + 1):
        cent, counts = update_centroids(x, assign, k)
        empty = (counts == 0).nonzero()[:, 0]
        if empty.numel():  # move empty clusters to the points farthest from their centroid
            far = torch.topk(dist, empty.numel()).indices
            cent[empty] = x[far]
        new_assign, dist = assign_to_centroids(x, cent, chunk_size)
        new_inertia = float(dist.double().sum())
        changed = bool((new_assign != assign).any())
        assign = new_assign
        converged = not changed or (tol > 0 and inertia - new_inertia <= tol * max(inertia, 1e-30))
        inertia = new_inertia
        if converged:
            break
    return cent, assign, inertia, done


def kmeans(x: ArrayLike,
           num_clusters: int,
           iters: int = 100,
           seed: int = 0,
           init: Union[str, torch.Tensor] = 'k-means++',
           n_init: int = 1,
           tol: float = 0.0,
           chunk_size: int = 65536) -> Dict[str, Any]:
    """k-means (Lloyd) with a fixed seed, batched over points, on ``x``'s device.

    Args:
        x (np.ndarray | Tensor): ``[N, D]`` float points (normalise them first for cosine k-means).
        num_clusters (int): K, ``1 <= K <= N``.
        iters (int): maximum Lloyd iterations per run; a run stops earlier when no assignment
            changes. Defaults to 100.
        seed (int): seed of the initialisation. Defaults to 0.
        init (str | Tensor): ``'k-means++'`` (default), ``'random'`` (K distinct points drawn
            uniformly), or a ``[K, D]`` tensor of initial centroids (then ``n_init`` must be 1).
        n_init (int): restarts; the run with the lowest inertia is kept. Defaults to 1.
        tol (float): also stop when the inertia drops by at most ``tol`` (relative) in an
            iteration. Defaults to 0 (only the assignment test).
        chunk_size (int): points per distance block. Defaults to 65536.

    Returns:
        dict: ``centroids`` ``[K, D]``, ``assignments`` ``[N]`` int64 (on ``x``'s device),
        ``inertia`` (float, sum of squared distances), ``iters`` (Lloyd iterations of the kept run).
    """
    x = _check_points('x', x)
    num_clusters = _check_pos_int('num_clusters', num_clusters)
    iters = _check_pos_int('iters', iters)
    n_init = _check_pos_int('n_init', n_init)
    if num_clusters > x.shape[0]:
        raise ValueError(f'k-means needs at least num_clusters={num_clusters} points, got '
                         f'{x.shape[0]}')
    if not tol >= 0:
        raise ValueError(f'tol must be >= 0, got {tol!r}')
    gen = torch.Generator().manual_seed(int(seed))
    best: Optional[Dict[str, Any]] = None
    for _ in range(n_init):
        if isinstance(init, torch.Tensor):
            if n_init != 1 or tuple(init.shape) != (num_clusters, x.shape[1]):
                raise ValueError(f'init centroids must be [{num_clusters}, {x.shape[1]}] with '
                                 f'n_init=1, got {tuple(init.shape)} and n_init={n_init}')
            cent = init.to(device=x.device, dtype=x.dtype).clone()
        elif init == 'k-means++':
            cent = kmeans_plusplus_init(x, num_clusters, gen, chunk_size)
        elif init == 'random':
            cent = x[torch.randperm(x.shape[0], generator=gen)[:num_clusters].to(x.device)].clone()
        else:
            raise ValueError(f'init must be one of {_INITS} or a tensor, got {init!r}')
        cent, assign, inertia, done = _lloyd(x, cent, iters, tol, chunk_size)
        if best is None or inertia < best['inertia']:
            best = dict(centroids=cent, assignments=assign, inertia=inertia, iters=done)
    return best


def cluster_class_counts(clusters: ArrayLike, labels: ArrayLike, num_clusters: int,
                         num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Contingency table ``counts[k, c]`` = pixels of cluster ``k`` labelled ``c``.

    Args:
        clusters (np.ndarray | Tensor): cluster ids in ``[0, K)``, any shape.
        labels (np.ndarray | Tensor): class ids in ``[0, C)`` or ``ignore_index``, same shape.
        num_clusters (int): K.
        num_classes (int): C.
        ignore_index (int): label to skip. Defaults to 255.

    Returns:
        Tensor: int64 ``[K, C]`` (on ``labels``' device).
    """
    n = max(_check_pos_int('num_clusters', num_clusters),
            _check_pos_int('num_classes', num_classes))
    cm = confusion_matrix(clusters, labels, n, ignore_index)  # cm[label, cluster]
    if num_classes < n and bool((cm[num_classes:] > 0).any()):
        raise ValueError(f'labels must be in [0, {num_classes}) or ignore_index={ignore_index}')
    if num_clusters < n and bool((cm[:, num_clusters:] > 0).any()):
        raise ValueError(f'clusters must be in [0, {num_clusters})')
    return cm[:num_classes, :num_clusters].t().contiguous()


def hungarian_mapping(counts: ArrayLike) -> torch.Tensor:
    """One-to-one cluster -> class map maximising the matched pixels (needs ``K == C``).

    Args:
        counts (np.ndarray | Tensor): ``[K, C]`` contingency table (:func:`cluster_class_counts`).

    Returns:
        Tensor: int64 ``[K]``, ``mapping[k]`` = class of cluster ``k`` (a permutation).
    """
    from scipy.optimize import linear_sum_assignment
    c = counts.detach().cpu().numpy() if isinstance(counts, torch.Tensor) else np.asarray(counts)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f'Hungarian matching needs as many clusters as classes (a square [K, C] '
                         f'table), got shape {c.shape}; use majority matching for K > C')
    rows, cols = linear_sum_assignment(c.astype(np.float64), maximize=True)
    mapping = np.empty(c.shape[0], dtype=np.int64)
    mapping[rows] = cols
    return torch.from_numpy(mapping)


def majority_mapping(counts: ArrayLike) -> torch.Tensor:
    """Many-to-one cluster -> class map: the class most labelled pixels of the cluster have.

    Ties go to the lowest class id; a cluster without labelled pixels gets ``-1``.

    Args:
        counts (np.ndarray | Tensor): ``[K, C]`` contingency table.

    Returns:
        Tensor: int64 ``[K]``.
    """
    c = _as_long_tensor('counts', counts)
    if c.ndim != 2:
        raise ValueError(f'counts must be [K, C], got shape {tuple(c.shape)}')
    top, arg = c.max(1)
    return torch.where(top > 0, arg, torch.full_like(arg, -1)).cpu()


def upsample_label_map(label_map: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour upsampling of integer maps ``[N, h, w]`` to ``[N, H, W]`` (int64)."""
    if tuple(label_map.shape[-2:]) == tuple(size):
        return label_map.long()
    return F.interpolate(label_map[:, None].double(), size=tuple(size),
                         mode='nearest')[:, 0].long()


def overclustering_eval(feats: ArrayLike,
                        masks: ArrayLike,
                        num_classes: int,
                        num_clusters: int,
                        matching: str = 'majority',
                        normalize: bool = True,
                        ignore_index: int = 255,
                        seed: int = 0,
                        iters: int = 100,
                        n_init: int = 1,
                        init: str = 'k-means++',
                        chunk_size: int = 65536,
                        image_batch: int = 64) -> Dict[str, Any]:
    """k-means on the patch features of a labelled set, clusters mapped to classes, mIoU.

    Args:
        feats (np.ndarray | Tensor): ``[N, D, h, w]`` frozen patch features.
        masks (np.ndarray | Tensor): ``[N, H, W]`` labels in ``[0, C)`` or ``ignore_index``.
        num_classes (int): C.
        num_clusters (int): K (``== C`` for ``'hungarian'``, ``>= C`` for ``'majority'``).
        matching (str): ``'majority'`` (default) or ``'hungarian'``.
        normalize (bool): L2-normalise the features first (cosine k-means, the references').
            Defaults to True.
        ignore_index (int): Defaults to 255.
        seed / iters / n_init / init / chunk_size: see :func:`kmeans`.
        image_batch (int): images upsampled at a time (bounds the label-size memory). Defaults
            to 64.

    Returns:
        dict: ``mIoU``, ``per_class_iou``, ``pixel_acc``, ``mAcc``, ``num_pixels``
        (:func:`miou_from_confusion`), ``confusion`` ``[C, C]``, ``mapping`` ``[K]`` (class of each
        cluster, -1 = cluster without a labelled pixel), ``clusters`` ``[N, h, w]`` (cluster map),
        ``inertia``, ``num_clusters``, ``matching``.
    """
    if matching not in _MATCHINGS:
        raise ValueError(f'matching must be one of {_MATCHINGS}, got {matching!r}')
    num_classes = _check_pos_int('num_classes', num_classes)
    num_clusters = _check_pos_int('num_clusters', num_clusters)
    if matching == 'hungarian' and num_clusters != num_classes:
        raise ValueError(f'Hungarian matching needs num_clusters == num_classes, got '
                         f'{num_clusters} and {num_classes}; use matching="majority"')
    if matching == 'majority' and num_clusters < num_classes:
        raise ValueError(f'majority matching needs num_clusters >= num_classes, got '
                         f'{num_clusters} < {num_classes}')
    if isinstance(feats, np.ndarray):
        feats = torch.from_numpy(np.ascontiguousarray(feats))
    if not isinstance(feats, torch.Tensor) or feats.ndim != 4 or not feats.is_floating_point():
        raise ValueError(f'feats must be a float [N, D, h, w] tensor, got '
                         f'{tuple(getattr(feats, "shape", ()))}')
    masks = _as_long_tensor('masks', masks).to(feats.device)
    if masks.ndim != 3 or masks.shape[0] != feats.shape[0]:
        raise ValueError(f'masks must be [N, H, W] with N={feats.shape[0]}, got '
                         f'{tuple(masks.shape)}')
    n, d, h, w = feats.shape
    x = feats.permute(0, 2, 3, 1).reshape(-1, d).float()
    if normalize:
        x = F.normalize(x, dim=1)
    km = kmeans(x, num_clusters, iters=iters, seed=seed, init=init, n_init=n_init,
                chunk_size=chunk_size)
    clusters = km['assignments'].reshape(n, h, w)
    size = tuple(masks.shape[-2:])
    counts = torch.zeros(num_clusters, num_classes, dtype=torch.long, device=masks.device)
    for s in range(0, n, image_batch):
        up = upsample_label_map(clusters[s:s + image_batch], size)
        counts += cluster_class_counts(up, masks[s:s + image_batch], num_clusters, num_classes,
                                       ignore_index)
    mapping = hungarian_mapping(counts) if matching == 'hungarian' else majority_mapping(counts)
    # a cluster without labelled pixels (mapping -1) covers only ignored pixels of this set
    lut = mapping.clamp_min(0).to(masks.device)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long, device=masks.device)
    for s in range(0, n, image_batch):
        pred = lut[upsample_label_map(clusters[s:s + image_batch], size)]
        cm += confusion_matrix(pred, masks[s:s + image_batch], num_classes, ignore_index)
    res = miou_from_confusion(cm)
    res.update(confusion=cm.cpu().numpy(), mapping=mapping, clusters=clusters.cpu(),
               inertia=km['inertia'], num_clusters=num_clusters, matching=matching)
    return res

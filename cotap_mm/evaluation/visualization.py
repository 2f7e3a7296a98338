"""Pictures of dense features: PCA colours, patch-similarity maps, k-means (overclustering) maps.

Used to look at over-dispersion (CoTAP, https://arxiv.org/abs/2509.09429): with concentrated
features, PCA colours are uniform inside each object, a query patch is similar to the whole
object (and to same-class objects), not only to its neighbours, and the k-means clusters of one
image's patches follow its objects (the per-image view of the overclustering protocol,
:mod:`cotap_mm.evaluation.overclustering`). No matplotlib: PNGs are written with PIL.
"""
import logging
import os
import os.path as osp
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]


def _feat_chw(name: str, x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f'{name} must be a numpy array or torch.Tensor, got {type(x).__name__}')
    if x.ndim != 3:
        raise ValueError(f'{name} must be [C, h, w], got shape {x.shape}')
    return x.astype(np.float64)


def pca_rgb(features: ArrayLike) -> np.ndarray:
    """Colour each position by the first 3 principal components of the features.

    The features of all ``h * w`` positions are centred, projected on their first three principal
    directions (SVD; sign fixed so that the largest-magnitude projection of each component is
    positive), and each component is min-max scaled to 0-255 on its own. Components with no
    variance (e.g. C < 3 or rank < 3) give 0.

    Args:
        features (np.ndarray | Tensor): ``[C, h, w]``.

    Returns:
        np.ndarray: uint8 ``[h, w, 3]``.
    """
    f = _feat_chw('features', features)
    c, h, w = f.shape
    x = f.reshape(c, h * w).T  # [hw, C]
    x = x - x.mean(0, keepdims=True)
    proj = np.zeros((h * w, 3))
    if h * w > 1 and np.abs(x).max() > 0:
        _, s, vt = np.linalg.svd(x, full_matrices=False)
        k = min(3, vt.shape[0])
        p = x @ vt[:k].T
        for j in range(k):
            if s[j] <= 1e-9 * max(s[0], 1e-300):
                p[:, j] = 0.0
                continue
            if p[np.argmax(np.abs(p[:, j])), j] < 0:
                p[:, j] = -p[:, j]
        proj[:, :k] = p
    lo, hi = proj.min(0), proj.max(0)
    rng = hi - lo
    out = np.where(rng > 1e-12, (proj - lo) / np.where(rng > 1e-12, rng, 1.0), 0.0)
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8).reshape(h, w, 3)


def similarity_map(feat_a: ArrayLike,
                   point: Tuple[int, int],
                   feat_b: Optional[ArrayLike] = None,
                   eps: float = 1e-12) -> np.ndarray:
    """Cosine similarity of the feature at ``point`` of ``feat_a`` to every position of ``feat_b``.

    Args:
        feat_a (np.ndarray | Tensor): ``[C, h, w]`` features holding the query.
        point (tuple[int, int]): query position ``(y, x)`` on ``feat_a``'s grid.
        feat_b (np.ndarray | Tensor, optional): ``[C, h2, w2]`` features compared to the query
            (same C). Defaults to None (= ``feat_a``).
        eps (float): norm clamp. Defaults to 1e-12.

    Returns:
        np.ndarray: float32 ``[h2, w2]`` in [-1, 1].
    """
    a = _feat_chw('feat_a', feat_a)
    b = a if feat_b is None else _feat_chw('feat_b', feat_b)
    if b.shape[0] != a.shape[0]:
        raise ValueError(f'feat_a and feat_b must have the same C, got {a.shape[0]} and '
                         f'{b.shape[0]}')
    y, x = int(point[0]), int(point[1])
    if not (0 <= y < a.shape[1] and 0 <= x < a.shape[2]):
        raise ValueError(f'point must lie in the {a.shape[1]}x{a.shape[2]} grid of feat_a, got '
                         f'{point}')
    q = a[:, y, x]
    q = q / max(np.linalg.norm(q), eps)
    bn = b / np.maximum(np.linalg.norm(b, axis=0, keepdims=True), eps)
    return np.clip(np.einsum('c,chw->hw', q, bn), -1.0, 1.0).astype(np.float32)


def kmeans_label_map(features: ArrayLike, num_clusters: int, seed: int = 0,
                     iters: int = 100) -> np.ndarray:
    """k-means clusters of the L2-normalised feature vectors of one map (cosine k-means).

    Clusters are numbered in the raster order of their first position (so a label map does not
    change colours when only the k-means numbering does).

    Args:
        features (np.ndarray | Tensor): ``[C, h, w]``.
        num_clusters (int): K, at most ``h * w``.
        seed (int): seed of the k-means++ initialisation. Defaults to 0.
        iters (int): maximum Lloyd iterations. Defaults to 100.

    Returns:
        np.ndarray: int64 ``[h, w]`` in ``[0, K)``.
    """
    from .overclustering import kmeans
    f = _feat_chw('features', features)
    c, h, w = f.shape
    if not 1 <= num_clusters <= h * w:
        raise ValueError(f'num_clusters must be in [1, {h * w}] (the positions of a {h}x{w} map), '
                         f'got {num_clusters}')
    x = torch.from_numpy(f.reshape(c, h * w).T.copy())
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    labels = kmeans(x, num_clusters, iters=iters, seed=seed)['assignments'].numpy()
    _, first = np.unique(labels, return_index=True)
    order = np.unique(labels)[np.argsort(first)]
    remap = np.empty(num_clusters, dtype=np.int64)
    remap[order] = np.arange(order.size)
    return remap[labels].reshape(h, w)


def label_colors(labels: np.ndarray) -> np.ndarray:
    """A distinct colour per label: hues spaced by the golden angle, alternating brightness.

    Args:
        labels (np.ndarray): int ``[h, w]``, values ``>= 0``.

    Returns:
        np.ndarray: uint8 ``[h, w, 3]``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise ValueError(f'labels must be a non-negative int [h, w] array, got {labels.dtype} '
                         f'{labels.shape}')
    n = int(labels.max()) + 1
    hue = (np.arange(n) * 0.618033988749895) % 1.0
    val = np.where(np.arange(n) % 2 == 0, 1.0, 0.7)
    # HSV (s = 0.75) -> RGB
    i = np.floor(hue * 6).astype(int) % 6
    fr = hue * 6 - np.floor(hue * 6)
    p, q, t = val * 0.25, val * (1 - 0.75 * fr), val * (1 - 0.75 * (1 - fr))
    rgb = np.select([i[:, None] == k for k in range(6)],
                    [np.stack(c, 1) for c in ((val, t, p), (q, val, p), (p, val, t),
                                              (p, q, val), (t, p, val), (val, p, q))])
    palette = np.rint(rgb * 255).astype(np.uint8)
    return palette[labels]


def _colormap(v: np.ndarray) -> np.ndarray:
    """[h, w] in [0, 1] -> uint8 [h, w, 3], a blue-cyan-yellow-red ramp (jet-like)."""
    v = np.clip(v, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return np.rint(np.stack([r, g, b], -1) * 255).astype(np.uint8)


def _resize(arr: np.ndarray, size: Tuple[int, int], nearest: bool) -> np.ndarray:
    from PIL import Image
    im = Image.fromarray(arr)
    return np.asarray(
        im.resize((size[1], size[0]), Image.NEAREST if nearest else Image.BILINEAR))


def save_feature_figure(path: str,
                        image: np.ndarray,
                        features: ArrayLike,
                        point: Optional[Tuple[int, int]] = None,
                        features_b: Optional[ArrayLike] = None,
                        image_b: Optional[np.ndarray] = None,
                        nearest: bool = True) -> np.ndarray:
    """Write ``image | PCA colours | similarity map`` side by side as a PNG.

    The PCA and similarity panels are upsampled to the image size (nearest by default, so patches
    stay visible); the similarity map of the query patch ``point`` (a red square marks it) is
    shown over ``image_b``/``features_b`` if given (cross-image similarity), else over ``image``
    itself, mapped from [-1, 1] to a jet-like ramp and blended 60/40 with that image.

    Args:
        path (str): output ``.png`` path (folders are created).
        image (np.ndarray): uint8 ``[H, W, 3]`` RGB image.
        features (np.ndarray | Tensor): ``[C, h, w]`` features of ``image``.
        point (tuple[int, int], optional): query patch ``(y, x)`` on the feature grid. Defaults to
            None (the centre).
        features_b (np.ndarray | Tensor, optional): ``[C, h2, w2]`` second image's features.
        image_b (np.ndarray, optional): uint8 ``[H2, W2, 3]`` second image (required with
            ``features_b``; panels are resized to ``image``'s size).
        nearest (bool): nearest (True) or bilinear upsampling of the panels. Defaults to True.

    Returns:
        np.ndarray: the written uint8 ``[H, 3 W, 3]`` canvas.
    """
    from PIL import Image
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError('image must be a uint8 [H, W, 3] numpy array')
    image = image.astype(np.uint8)
    H, W = image.shape[:2]
    f = _feat_chw('features', features)
    if point is None:
        point = (f.shape[1] // 2, f.shape[2] // 2)
    if (features_b is None) != (image_b is None):
        raise ValueError('features_b and image_b must be given together')
    sim = similarity_map(f, point, features_b)
    base = image if image_b is None else _resize(np.asarray(image_b, dtype=np.uint8), (H, W),
                                                 False)
    pca = _resize(pca_rgb(f), (H, W), nearest)
    blend = similarity_overlay(sim, base, nearest)
    panel = image.copy()  # the query patch marked on the first panel
    _mark_cell(panel, point, f.shape[1:])
    canvas = np.concatenate([panel, pca, blend], axis=1)
    d = osp.dirname(osp.abspath(path))
    os.makedirs(d, exist_ok=True)
    Image.fromarray(canvas).save(path, format='PNG')
    return canvas


def similarity_overlay(sim: np.ndarray, image: np.ndarray, nearest: bool = True) -> np.ndarray:
    """A similarity map in [-1, 1] on a jet-like ramp, upsampled to ``image`` and blended 60/40.

    Args:
        sim (np.ndarray): ``[h, w]`` in [-1, 1].
        image (np.ndarray): uint8 ``[H, W, 3]``.
        nearest (bool): nearest (True) or bilinear upsampling. Defaults to True.

    Returns:
        np.ndarray: uint8 ``[H, W, 3]``.
    """
    heat = _resize(_colormap((np.asarray(sim, dtype=np.float64) + 1.0) / 2.0), image.shape[:2],
                   nearest)
    return np.rint(0.6 * heat + 0.4 * image).astype(np.uint8)


def grid_point(xy: Tuple[float, float], image_hw: Tuple[int, int],
               grid_hw: Tuple[int, int]) -> Tuple[int, int]:
    """The feature-grid cell ``(y, x)`` under the pixel ``xy = (x, y)`` of an image of size
    ``image_hw``; a pixel outside the image is an error."""
    x, y = float(xy[0]), float(xy[1])
    H, W = image_hw
    if not (0 <= x < W and 0 <= y < H):
        raise ValueError(f'point (x={x:g}, y={y:g}) is outside the {W}x{H} image')
    return min(int(y * grid_hw[0] / H), grid_hw[0] - 1), min(int(x * grid_hw[1] / W),
                                                             grid_hw[1] - 1)


def _mark_cell(panel: np.ndarray, cell: Tuple[int, int], grid_hw: Tuple[int, int]) -> None:
    H, W = panel.shape[:2]
    ph, pw = H / grid_hw[0], W / grid_hw[1]
    y0, x0 = int(cell[0] * ph), int(cell[1] * pw)
    y1, x1 = max(int((cell[0] + 1) * ph) - 1, y0), max(int((cell[1] + 1) * pw) - 1, x0)
    red = np.array([255, 0, 0], dtype=np.uint8)
    panel[y0, x0:x1 + 1] = red
    panel[y1, x0:x1 + 1] = red
    panel[y0:y1 + 1, x0] = red
    panel[y0:y1 + 1, x1] = red


def feature_panels(image: np.ndarray,
                   features: ArrayLike,
                   cells: Sequence[Tuple[int, int]] = (),
                   kmeans_k: Sequence[int] = (),
                   seed: int = 0,
                   nearest: bool = True) -> List[Tuple[str, np.ndarray]]:
    """The pictures of one image's dense features, each at the image's size.

    ``image`` (query cells marked in red), ``pca`` (:func:`pca_rgb`), ``sim y,x`` for each query
    cell (:func:`similarity_map` over the image) and ``kmeans K`` for each K
    (:func:`kmeans_label_map`, coloured by :func:`label_colors`; a K above the number of feature
    positions is skipped with a logged warning, e.g. K = 8 on the 2 x 2 map of a ResNet at 64 px).

    Args:
        image (np.ndarray): uint8 ``[H, W, 3]`` RGB.
        features (np.ndarray | Tensor): ``[C, h, w]`` features of ``image``.
        cells (Sequence[tuple[int, int]]): query cells ``(y, x)`` on the feature grid; empty: the
            central cell.
        kmeans_k (Sequence[int]): numbers of clusters of the k-means maps. Defaults to none.
        seed (int): k-means seed. Defaults to 0.
        nearest (bool): nearest (True) or bilinear upsampling of the maps. Defaults to True.

    Returns:
        list[tuple[str, np.ndarray]]: (title, uint8 ``[H, W, 3]``) panels in the order above.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError('image must be a uint8 [H, W, 3] numpy array')
    image = image.astype(np.uint8)
    f = _feat_chw('features', features)
    grid = f.shape[1:]
    cells = [tuple(int(v) for v in c) for c in cells] or [(grid[0] // 2, grid[1] // 2)]
    marked = image.copy()
    for cell in cells:
        if not (0 <= cell[0] < grid[0] and 0 <= cell[1] < grid[1]):
            raise ValueError(f'cell {cell} is outside the {grid[0]}x{grid[1]} feature grid')
        _mark_cell(marked, cell, grid)
    panels = [('image', marked), ('pca', _resize(pca_rgb(f), image.shape[:2], nearest))]
    for cell in cells:
        panels.append((f'sim {cell[0]},{cell[1]}',
                       similarity_overlay(similarity_map(f, cell), image, nearest)))
    for k in kmeans_k:
        if int(k) > grid[0] * grid[1]:
            from mmengine.logging import print_log
            print_log(f'k-means map with K={int(k)} skipped: the {grid[0]}x{grid[1]} feature map '
                      f'has {grid[0] * grid[1]} positions', logger='current',
                      level=logging.WARNING)
            continue
        labels = kmeans_label_map(f, int(k), seed=seed)
        panels.append((f'kmeans {int(k)}', _resize(label_colors(labels).astype(np.uint8),
                                                    image.shape[:2], True)))
    return panels


def save_panels(path: str, panels: Sequence[Tuple[str, np.ndarray]], title_height: int = 12
                ) -> np.ndarray:
    """Write panels of one size side by side, each under its title (PIL's default font), as PNG.

    Args:
        path (str): output ``.png`` path (folders are created).
        panels (Sequence[tuple[str, np.ndarray]]): (title, uint8 ``[H, W, 3]``), one ``H, W``.
        title_height (int): pixels of the title strip; 0 writes no titles. Defaults to 12.

    Returns:
        np.ndarray: the written uint8 canvas ``[title_height + H, n W, 3]``.
    """
    from PIL import Image, ImageDraw
    if not panels:
        raise ValueError('no panels to save')
    shapes = {p.shape for _, p in panels}
    if len(shapes) != 1:
        raise ValueError(f'panels must share one [H, W, 3] shape, got {sorted(shapes)}')
    H, W = panels[0][1].shape[:2]
    canvas = np.full((title_height + H, W * len(panels), 3), 255, dtype=np.uint8)
    for i, (_, p) in enumerate(panels):
        canvas[title_height:, i * W:(i + 1) * W] = p
    im = Image.fromarray(canvas)
    if title_height > 0:
        draw = ImageDraw.Draw(im)
        for i, (title, _) in enumerate(panels):
            draw.text((i * W + 2, 0), title, fill=(0, 0, 0))
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    im.save(path, format='PNG')
    return np.asarray(im)

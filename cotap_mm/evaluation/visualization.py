"""Pictures of dense features: PCA colouring and patch-similarity maps.

Used to look at over-dispersion (CoTAP, https://arxiv.org/abs/2509.09429): with concentrated
features, PCA colours are uniform inside each object and a query patch is similar to the whole
object (and to same-class objects), not only to its neighbours. No matplotlib: PNGs are written
with PIL.
"""
import os
import os.path as osp
from typing import Optional, Tuple, Union

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
    heat = _resize(_colormap((sim + 1.0) / 2.0), (H, W), nearest)
    blend = np.rint(0.6 * heat + 0.4 * base).astype(np.uint8)
    # mark the query patch on the first panel
    ph, pw = H / f.shape[1], W / f.shape[2]
    y0, x0 = int(point[0] * ph), int(point[1] * pw)
    y1, x1 = max(int((point[0] + 1) * ph) - 1, y0), max(int((point[1] + 1) * pw) - 1, x0)
    panel = image.copy()
    red = np.array([255, 0, 0], dtype=np.uint8)
    panel[y0, x0:x1 + 1] = red
    panel[y1, x0:x1 + 1] = red
    panel[y0:y1 + 1, x0] = red
    panel[y0:y1 + 1, x1] = red
    canvas = np.concatenate([panel, pca, blend], axis=1)
    d = osp.dirname(osp.abspath(path))
    os.makedirs(d, exist_ok=True)
    Image.fromarray(canvas).save(path, format='PNG')
    return canvas

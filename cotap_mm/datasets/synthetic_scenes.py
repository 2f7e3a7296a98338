"""Generated scene-centric images with ground-truth masks (no download needed).

Why: dense self-supervised learning (CoTAP, https://arxiv.org/abs/2509.09429) is about *scene-centric*
images in which several objects of several categories appear, overlap and occlude each other, and
about whether patches of the same instance / category end up close in feature space. No real data set
can be downloaded in this project, so this module draws such scenes procedurally, with exact masks.

What a scene is
---------------
* A cluttered background (ground-truth class ``0``): a random base colour, smooth low-frequency colour
  noise, a few low-contrast flat irregular blobs and thin lines. None of these is an object class: the
  blobs are flat (no texture) and of low contrast, object classes are high-contrast textured shapes.
* ``min_objects..max_objects`` objects of ``num_classes`` object classes (ids ``1..K``), drawn in
  painter's order: later objects occlude earlier ones and the mask holds the top-most object.
* A class is recognisable only by *shared patterns*: its shape family (:data:`SHAPES`) and its texture
  statistics (:data:`TEXTURES`, a class-specific frequency band / pattern type). Object class ``k``
  (0-based, ``class id = k + 1``) uses shape ``SHAPES[k % 8]`` and texture
  ``TEXTURES[(k % 8 + k // 8) % 8]``, so every (shape, texture) pair is unique for up to 64 classes and
  the default 8 classes have 8 different shapes and 8 different textures (:func:`class_descriptions`).
* Per-instance variation: two random colours (random hues, one bright one dark: colour does not tell
  the class), scale, rotation, texture period (within the class band) and texture phase. The texture
  lives in the object's own frame (it rotates with the object).
* Hard (not anti-aliased) edges, so the mask is exact. Mild Gaussian pixel noise over everything.

Determinism: image ``i`` of split ``s`` is drawn from :func:`scene_seed` ``(seed, s, i)``, so any index
is produced on demand without generating the others. :func:`generate_scene` returns RGB ``uint8``
images; the registered datasets emit **BGR** by default, like ``LoadImageFromFile`` does, so the usual
``data_preprocessor`` (``to_rgb=True`` / ``bgr_to_rgb=True``) configs apply unchanged.

Label convention
----------------
Masks hold class ids ``0..K`` with ``0 = background`` (a real class here, it is evaluated) and no
ignore pixels. mmseg configs therefore use ``reduce_zero_label=False`` and ``K + 1`` classes
(:func:`synthetic_metainfo`). This differs from real ADE20K (where mmseg's ``ADE20KDataset`` uses
``reduce_zero_label=True`` because 0 means "other" there): do **not** load the files written by
:func:`write_ade20k_layout` with ``ADE20KDataset``; use ``BaseSegDataset`` (or ``SyntheticScenesSeg``
for in-memory generation) with ``metainfo=synthetic_metainfo(K)`` and ``reduce_zero_label=False``.
"""
import json
import os
import os.path as osp
import zlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from mmengine.dataset import BaseDataset
from mmengine.registry import DefaultScope

from mmpretrain.registry import DATASETS, TRANSFORMS

SHAPES: Tuple[str, ...] = ('disc', 'square', 'triangle', 'star', 'ring', 'cross', 'ellipse',
                           'hexagon')
TEXTURES: Tuple[str, ...] = ('fine_stripes', 'checker', 'dots', 'gradient', 'wide_stripes', 'grid',
                             'speckle', 'wavy')
MAX_CLASSES: int = len(SHAPES) * len(TEXTURES)

# Texture period bands in pixels (class-specific statistics; per-instance jitter inside the band).
_PERIOD_BANDS: Dict[str, Tuple[float, float]] = {
    'fine_stripes': (3.0, 4.5),
    'checker': (5.0, 8.0),
    'dots': (6.0, 9.0),
    'gradient': (1.0, 1.0),  # unused
    'wide_stripes': (9.0, 13.0),
    'grid': (6.0, 9.0),
    'speckle': (1.0, 1.0),  # unused
    'wavy': (5.0, 7.0),
}


def _check_int(name: str, value, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f'{name} must be an int, got {type(value).__name__}')
    value = int(value)
    if value < low or (high is not None and value > high):
        rng = f'[{low}, {high}]' if high is not None else f'>= {low}'
        raise ValueError(f'{name} must be in {rng}, got {value}')
    return value


def class_shape_texture(class_id: int) -> Tuple[str, str]:
    """Shape family and texture of object class ``class_id`` (1-based; 0 is background).

    Args:
        class_id (int): object class id in ``[1, 64]``.

    Returns:
        tuple[str, str]: ``(shape, texture)``.
    """
    class_id = _check_int('class_id', class_id, 1, MAX_CLASSES)
    k = class_id - 1
    s = k % len(SHAPES)
    t = (s + k // len(SHAPES)) % len(TEXTURES)
    return SHAPES[s], TEXTURES[t]


def class_descriptions(num_classes: int = 8) -> List[str]:
    """Human-readable description of every class id ``0..num_classes``.

    Args:
        num_classes (int): number of object classes K. Defaults to 8.

    Returns:
        list[str]: ``K + 1`` strings, e.g. ``['background', 'disc/fine_stripes', ...]``.
    """
    num_classes = _check_int('num_classes', num_classes, 1, MAX_CLASSES)
    return ['background'] + ['/'.join(class_shape_texture(c)) for c in range(1, num_classes + 1)]


def synthetic_metainfo(num_classes: int = 8) -> dict:
    """mmseg-style metainfo: ``classes=('background', 'class1', ..., 'classK')`` and a palette.

    The palette is deterministic (fixed seed) with black background.

    Args:
        num_classes (int): number of object classes K. Defaults to 8.

    Returns:
        dict: ``dict(classes=tuple[str] (K+1), palette=list[list[int]] (K+1 x 3))``.
    """
    num_classes = _check_int('num_classes', num_classes, 1, MAX_CLASSES)
    classes = ('background', ) + tuple(f'class{c}' for c in range(1, num_classes + 1))
    rng = np.random.default_rng(12345)
    palette = [[0, 0, 0]] + rng.integers(40, 256, size=(num_classes, 3)).tolist()
    return dict(classes=classes, palette=palette)


def scene_seed(seed: int, split: str, index: int) -> int:
    """Seed of image ``index`` of ``split`` for the data set seed ``seed``.

    Uses ``numpy.random.SeedSequence([seed, crc32(split), index])``, so every (seed, split, index)
    gives an independent, reproducible stream and any index can be generated on its own.

    Args:
        seed (int): data set seed (>= 0).
        split (str): split name, e.g. ``'train'`` or ``'val'``.
        index (int): image index (>= 0).

    Returns:
        int: a 64-bit seed for :func:`generate_scene`.
    """
    seed = _check_int('seed', seed, 0)
    index = _check_int('index', index, 0)
    if not isinstance(split, str):
        raise TypeError(f'split must be a str, got {type(split).__name__}')
    ss = np.random.SeedSequence([seed, zlib.crc32(split.encode('utf-8')), index])
    return int(ss.generate_state(1, dtype=np.uint64)[0])


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] -> RGB float array in [0, 255]."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.asarray(rgb, dtype=np.float32) * 255.0


def _upsample_bilinear(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a ``[g, g, C]`` grid to ``[size, size, C]`` (corners aligned)."""
    g = grid.shape[0]
    pos = np.linspace(0.0, g - 1.0, size, dtype=np.float32)
    i0 = np.minimum(pos.astype(np.int64), g - 2)
    w = (pos - i0)[:, None]
    rows = grid[i0] * (1 - w[..., None]) + grid[i0 + 1] * w[..., None]  # [size, g, C]
    cols = rows[:, i0] * (1 - w[None]) + rows[:, i0 + 1] * w[None]
    return cols


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, r: float, aspect: float) -> np.ndarray:
    """Boolean mask of a shape of 'radius' ``r`` in local (rotated) coordinates ``u, v``."""
    if shape == 'disc':
        return u * u + v * v <= r * r
    if shape == 'ellipse':
        return (u / r)**2 + (v / (r * aspect))**2 <= 1.0
    if shape == 'square':
        a = 0.8 * r
        return (np.abs(u) <= a) & (np.abs(v) <= a)
    if shape == 'ring':
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.55 * r)**2)
    if shape == 'cross':
        w = 0.3 * r
        au, av = np.abs(u), np.abs(v)
        return ((au <= w) & (av <= r)) | ((av <= w) & (au <= r))
    if shape == 'triangle':
        m = np.ones(u.shape, dtype=bool)
        for ang in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            m &= (u * np.cos(ang) + v * np.sin(ang)) <= 0.5 * r
        return m
    if shape == 'hexagon':
        a = 0.9 * r * np.cos(np.pi / 6)
        m = np.ones(u.shape, dtype=bool)
        for ang in (0.0, np.pi / 3, 2 * np.pi / 3):
            m &= np.abs(u * np.cos(ang) + v * np.sin(ang)) <= a
        return m
    if shape == 'star':
        theta = np.arctan2(v, u)
        x = (theta * 5.0 / (2.0 * np.pi)) % 1.0
        tri = np.abs(2.0 * x - 1.0)  # 1 at the tips, 0 between
        rho = r * (0.45 + 0.55 * tri)
        return u * u + v * v <= rho * rho
    raise ValueError(f'unknown shape {shape!r}')


def _texture(texture: str, u: np.ndarray, v: np.ndarray, r: float, period: float, phase: float,
             rng: np.random.Generator) -> np.ndarray:
    """Texture value in [0, 1] at local coordinates ``u, v``."""
    two_pi = 2.0 * np.pi
    if texture in ('fine_stripes', 'wide_stripes'):
        return (np.sin(two_pi * u / period + phase) > 0).astype(np.float32)
    if texture == 'checker':
        off = phase / two_pi * period
        return ((np.floor((u + off) / period) + np.floor((v + off) / period)) % 2).astype(np.float32)
    if texture == 'dots':
        off = phase / two_pi * period
        du = (u + off) % period - period / 2
        dv = (v + off) % period - period / 2
        return (du * du + dv * dv <= (0.32 * period)**2).astype(np.float32)
    if texture == 'gradient':
        return np.clip((u / r + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)
    if texture == 'grid':
        off = phase / two_pi * period
        lw = 1.6
        return (((u + off) % period < lw) | ((v + off) % period < lw)).astype(np.float32)
    if texture == 'speckle':
        return (rng.random(u.shape) < 0.5).astype(np.float32)
    if texture == 'wavy':
        return (np.sin(two_pi * (u + 1.8 * np.sin(two_pi * v / 11.0)) / period + phase)
                > 0).astype(np.float32)
    raise ValueError(f'unknown texture {texture!r}')


def _draw_background(rng: np.random.Generator, size: int, clutter: bool) -> np.ndarray:
    """Float [size, size, 3] background in [0, 255]."""
    if not clutter:
        return np.zeros((size, size, 3), dtype=np.float32)
    base = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.45), rng.uniform(0.3, 0.75))
    img = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    g = int(rng.integers(3, 7))
    img = img + _upsample_bilinear(rng.normal(0.0, 14.0, size=(g, g, 3)).astype(np.float32), size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # low-contrast flat irregular blobs (smooth random radial profile), alpha-blended
    for _ in range(int(rng.integers(3, 9))):
        cy, cx = rng.uniform(0, size, 2)
        rad = rng.uniform(0.06, 0.22) * size
        dy, dx = yy - cy, xx - cx
        theta = np.arctan2(dy, dx)
        prof = np.ones_like(theta)
        for k in (2, 3, 5):
            prof += rng.uniform(-0.22, 0.22) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        m = dy * dy + dx * dx <= (rad * prof)**2
        col = base + rng.normal(0.0, 18.0, size=3)
        img[m] = 0.55 * img[m] + 0.45 * col
    # a few thin low-contrast straight lines
    for _ in range(int(rng.integers(1, 4))):
        ang = rng.uniform(0, np.pi)
        c = rng.uniform(0.2, 0.8) * size
        d = np.abs((xx - size / 2) * np.sin(ang) - (yy - size / 2) * np.cos(ang) - (c - size / 2))
        m = d <= 0.6
        img[m] = 0.6 * img[m] + 0.4 * (base + rng.normal(0.0, 20.0, size=3))
    return img


def generate_scene(seed: int,
                   size: int = 96,
                   num_classes: int = 8,
                   min_objects: int = 2,
                   max_objects: int = 6,
                   clutter: bool = True,
                   noise_std: float = 3.0,
                   scale_range: Tuple[float, float] = (0.10, 0.26),
                   return_instances: bool = False,
                   return_objects: bool = False) -> Tuple[Any, ...]:
    """Draw one scene and its ground-truth mask, deterministically from ``seed``.

    Args:
        seed (int): seed of this image (e.g. from :func:`scene_seed`), >= 0.
        size (int): image side in pixels, in [16, 1024]. Defaults to 96 (64-128 intended).
        num_classes (int): number of object classes K in [1, 64]; mask values are in ``0..K``.
            Defaults to 8.
        min_objects (int): minimum number of objects (>= 1). Defaults to 2.
        max_objects (int): maximum number of objects (>= min_objects, <= 254). Defaults to 6.
        clutter (bool): cluttered background (True) or plain black background, for tests and
            debugging (False). Defaults to True.
        noise_std (float): std of the Gaussian pixel noise added last (0 = none). Defaults to 3.
        scale_range (tuple[float, float]): object radius as a fraction of ``size``.
            Defaults to (0.10, 0.26).
        return_instances (bool): also return the instance map. Defaults to False.
        return_objects (bool): also return the drawn objects' parameters. Defaults to False.

    Returns:
        tuple: ``img`` uint8 ``[size, size, 3]`` (RGB), ``mask`` uint8 ``[size, size]`` with
        values in ``0..K`` (0 = background; top-most object wins), then, if ``return_instances``,
        ``instances`` uint8 ``[size, size]`` with 0 = background and ``j`` = the j-th drawn object
        (1-based painter order; fully occluded objects are absent), then, if ``return_objects``, a
        list (painter order) of dicts with ``instance_id``, ``class_id``, ``shape``, ``texture``,
        ``center`` ``(cy, cx)`` (pixel centres are at ``+0.5``), ``radius``, ``angle``,
        ``aspect``, ``period``, ``phase`` and ``region`` (bool ``[size, size]``: the object's
        full extent before occlusion).
    """
    seed = _check_int('seed', seed, 0)
    size = _check_int('size', size, 16, 1024)
    num_classes = _check_int('num_classes', num_classes, 1, MAX_CLASSES)
    min_objects = _check_int('min_objects', min_objects, 1, 254)
    max_objects = _check_int('max_objects', max_objects, min_objects, 254)
    if noise_std < 0:
        raise ValueError(f'noise_std must be >= 0, got {noise_std}')
    lo, hi = scale_range
    if not 0 < lo <= hi:
        raise ValueError(f'scale_range must satisfy 0 < low <= high, got {scale_range}')

    rng = np.random.default_rng(seed)
    img = _draw_background(rng, size, clutter)
    mask = np.zeros((size, size), dtype=np.uint8)
    inst = np.zeros((size, size), dtype=np.uint8)

    n_obj = int(rng.integers(min_objects, max_objects + 1))
    objects: List[dict] = []
    for j in range(n_obj):
        cls = int(rng.integers(1, num_classes + 1))
        shape, texture = class_shape_texture(cls)
        r = float(rng.uniform(lo, hi) * size)
        cy, cx = rng.uniform(0.1 * size, 0.9 * size, 2)
        theta = float(rng.uniform(0, 2 * np.pi))
        aspect = float(rng.uniform(0.45, 0.65))
        pb = _PERIOD_BANDS[texture]
        period = float(rng.uniform(*pb))
        phase = float(rng.uniform(0, 2 * np.pi))
        # two colours of random hue: one bright, one dark (V >= 0.2 so never black)
        c_hi = _hsv_to_rgb(rng.random(), rng.uniform(0.35, 1.0), rng.uniform(0.7, 1.0))
        c_lo = _hsv_to_rgb(rng.random(), rng.uniform(0.35, 1.0), rng.uniform(0.2, 0.45))
        if rng.random() < 0.5:
            c_hi, c_lo = c_lo, c_hi

        y0, y1 = max(int(np.floor(cy - r)) - 1, 0), min(int(np.ceil(cy + r)) + 2, size)
        x0, x1 = max(int(np.floor(cx - r)) - 1, 0), min(int(np.ceil(cx + r)) + 2, size)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = yy + 0.5 - cy, xx + 0.5 - cx
        ct, st = np.cos(theta), np.sin(theta)
        u = ct * dx + st * dy
        v = -st * dx + ct * dy
        m = _shape_mask(shape, u, v, r, aspect)
        if not m.any():
            continue
        t = _texture(texture, u, v, r, period, phase, rng)
        col = c_lo[None, None] + t[..., None] * (c_hi - c_lo)[None, None]
        region = img[y0:y1, x0:x1]
        region[m] = col[m]
        mask[y0:y1, x0:x1][m] = cls
        inst[y0:y1, x0:x1][m] = j + 1
        if return_objects:
            full = np.zeros((size, size), dtype=bool)
            full[y0:y1, x0:x1] = m
            objects.append(
                dict(instance_id=j + 1, class_id=cls, shape=shape, texture=texture,
                     center=(float(cy), float(cx)), radius=r, angle=theta, aspect=aspect,
                     period=period, phase=phase, region=full))

    if noise_std > 0:
        img = img + rng.normal(0.0, noise_std, size=img.shape).astype(np.float32)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    out: Tuple[Any, ...] = (img, mask)
    if return_instances:
        out = out + (inst, )
    if return_objects:
        out = out + (objects, )
    return out


def _build_pipeline(pipeline: Sequence[Union[dict, Callable]], registry) -> List[Callable]:
    """Build dict transforms with the host toolbox's registry (as mmpretrain's BaseDataset does),
    so the data set works whatever the current default scope is."""
    if isinstance(pipeline, dict) or not isinstance(pipeline, (list, tuple)):
        raise TypeError(f'pipeline must be a list of dicts / callables, got '
                        f'{type(pipeline).__name__}')
    # build under the host toolbox's scope: a runner of another toolbox (e.g. mmpretrain) may have
    # left its DefaultScope current, and mmengine would then look transforms up in that registry
    with DefaultScope.overwrite_default_scope(registry.scope):
        return [registry.build(t) if isinstance(t, dict) else t for t in pipeline]


def _check_split(split: str) -> str:
    if not isinstance(split, str) or not split:
        raise TypeError(f'split must be a non-empty str, got {split!r}')
    return split


class _SceneParams:
    """Shared argument handling of the two registered datasets."""

    def _set_scene_params(self, num_samples: int, split: str, seed: int, image_size: int,
                          num_classes: int, min_objects: int, max_objects: int, clutter: bool,
                          noise_std: float, channel_order: str) -> None:
        self.num_samples = _check_int('num_samples', num_samples, 0)
        self.split = _check_split(split)
        self.seed = _check_int('seed', seed, 0)
        self.image_size = _check_int('image_size', image_size, 16, 1024)
        self.num_classes = _check_int('num_classes', num_classes, 1, MAX_CLASSES)
        self.min_objects = _check_int('min_objects', min_objects, 1, 254)
        self.max_objects = _check_int('max_objects', max_objects, self.min_objects, 254)
        self.clutter = bool(clutter)
        if noise_std < 0:
            raise ValueError(f'noise_std must be >= 0, got {noise_std}')
        self.noise_std = float(noise_std)
        if channel_order not in ('bgr', 'rgb'):
            raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
        self.channel_order = channel_order

    def _scene_list(self) -> List[dict]:
        return [dict(scene_index=i) for i in range(self.num_samples)]

    def generate(self, scene_index: int, return_instances: bool = False) -> Tuple[np.ndarray, ...]:
        """Generate scene ``scene_index`` of this data set (RGB image, mask[, instances])."""
        return generate_scene(
            scene_seed(self.seed, self.split, scene_index),
            size=self.image_size,
            num_classes=self.num_classes,
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            clutter=self.clutter,
            noise_std=self.noise_std,
            return_instances=return_instances)

    def _fill(self, results: dict) -> Tuple[dict, np.ndarray]:
        img, mask = self.generate(results['scene_index'])
        if self.channel_order == 'bgr':
            img = np.ascontiguousarray(img[..., ::-1])
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results, mask


@DATASETS.register_module()
class SyntheticScenes(_SceneParams, BaseDataset):
    """Generated scene-centric images for (dense) self-supervised pretraining.

    Images are generated lazily in :meth:`prepare_data` (``data_list`` holds only indices), so
    pipelines start from ``'img'`` (no ``LoadImageFromFile``). Image ``i`` is the same whatever else
    is generated (per-index seeding, :func:`scene_seed`). Used for CoTAP
    (https://arxiv.org/abs/2509.09429) pretraining / smoke runs where no real data can be fetched.

    Results dict given to the pipeline: ``img`` (uint8 ``[S, S, 3]``, BGR by default like
    ``LoadImageFromFile``), ``img_shape``, ``ori_shape`` (``(S, S)``), ``sample_idx``,
    ``scene_index`` and, if ``with_mask``, ``gt_seg_map`` (uint8 ``[S, S]``, values ``0..K``).

    Args:
        num_samples (int): data set length. Defaults to 1000.
        split (str): split name mixed into the seeds (``'train'`` / ``'val'``). Defaults to 'train'.
        seed (int): data set seed. Defaults to 0.
        image_size (int): image side S in pixels. Defaults to 96.
        num_classes (int): number of object classes K. Defaults to 8.
        min_objects (int): min objects per image. Defaults to 2.
        max_objects (int): max objects per image. Defaults to 6.
        clutter (bool): cluttered background. Defaults to True.
        noise_std (float): pixel noise std. Defaults to 3.
        with_mask (bool): put ``gt_seg_map`` into results. Defaults to False.
        channel_order (str): ``'bgr'`` (default, as ``LoadImageFromFile``) or ``'rgb'``.
        pipeline (Sequence[dict | Callable]): transforms. Defaults to ().
        **kwargs: other :class:`mmengine.dataset.BaseDataset` arguments (``indices``,
            ``serialize_data``, ``test_mode``, ``lazy_init``, ``max_refetch``, ``metainfo``).
    """

    def __init__(self,
                 num_samples: int = 1000,
                 split: str = 'train',
                 seed: int = 0,
                 image_size: int = 96,
                 num_classes: int = 8,
                 min_objects: int = 2,
                 max_objects: int = 6,
                 clutter: bool = True,
                 noise_std: float = 3.0,
                 with_mask: bool = False,
                 channel_order: str = 'bgr',
                 pipeline: Sequence[Union[dict, Callable]] = (),
                 metainfo: Optional[dict] = None,
                 **kwargs) -> None:
        self._set_scene_params(num_samples, split, seed, image_size, num_classes, min_objects,
                               max_objects, clutter, noise_std, channel_order)
        self.with_mask = bool(with_mask)
        meta = synthetic_metainfo(self.num_classes)
        if metainfo:
            meta.update(metainfo)
        super().__init__(
            ann_file='', metainfo=meta, pipeline=_build_pipeline(pipeline, TRANSFORMS), **kwargs)

    def load_data_list(self) -> List[dict]:
        """One small dict per image: ``dict(scene_index=i)``."""
        return self._scene_list()

    def prepare_data(self, idx: int):
        """Generate image ``idx`` and run the pipeline on it."""
        results, mask = self._fill(self.get_data_info(idx))
        if self.with_mask:
            results['gt_seg_map'] = mask
        return self.pipeline(results)


def _mmseg_datasets():
    """mmseg's ``DATASETS``, ``TRANSFORMS`` and ``BaseSegDataset`` (Nones if mmseg is missing)."""
    try:
        from mmseg.datasets import BaseSegDataset
        from mmseg.registry import DATASETS as SEG_DATASETS
        from mmseg.registry import TRANSFORMS as SEG_TRANSFORMS
    except ImportError:  # pragma: no cover - mmseg is part of the stack
        return None, None, None
    return SEG_DATASETS, SEG_TRANSFORMS, BaseSegDataset


_SEG_DATASETS, _SEG_TRANSFORMS, _BaseSegDataset = _mmseg_datasets()

if _BaseSegDataset is not None:

    @_SEG_DATASETS.register_module()
    class SyntheticScenesSeg(_SceneParams, _BaseSegDataset):
        """Generated scenes + masks as an mmseg semantic segmentation data set.

        Registered in ``mmseg.registry.DATASETS`` (``type='SyntheticScenesSeg'`` in mmseg configs,
        with ``custom_imports=dict(imports=['cotap_mm'])``) and in mmpretrain's ``DATASETS``. The
        data set itself puts ``img`` (BGR by default, like ``LoadImageFromFile``), ``gt_seg_map``
        and ``seg_fields=['gt_seg_map']`` into the results, so pipelines start *after* loading,
        e.g. ``[dict(type='RandomFlip', prob=0.5), dict(type='PackSegInputs')]``: no
        ``LoadImageFromFile`` / ``LoadAnnotations``. ``reduce_zero_label`` and a ``label_map``
        are applied exactly like mmseg's ``LoadAnnotations`` would.

        Metainfo: ``classes=('background', 'class1', ..., 'classK')`` (K + 1 classes, background
        is a real class) and a fixed palette (:func:`synthetic_metainfo`); use
        ``reduce_zero_label=False`` (default) to evaluate background, the CoTAP/VOC convention
        (https://arxiv.org/abs/2509.09429 evaluates VOC with background).

        Args:
            num_samples (int): data set length. Defaults to 100.
            split (str): split name mixed into the seeds. Defaults to 'val'.
            seed (int): data set seed. Defaults to 0.
            image_size (int): image side in pixels. Defaults to 96.
            num_classes (int): number of object classes K. Defaults to 8.
            min_objects (int): min objects per image. Defaults to 2.
            max_objects (int): max objects per image. Defaults to 6.
            clutter (bool): cluttered background. Defaults to True.
            noise_std (float): pixel noise std. Defaults to 3.
            channel_order (str): ``'bgr'`` (default) or ``'rgb'``.
            pipeline (Sequence[dict | Callable]): transforms. Defaults to ().
            reduce_zero_label (bool): mark class 0 as ignore (255) and shift the rest by -1.
                Defaults to False.
            ignore_index (int): ignore label. Defaults to 255.
            **kwargs: other ``BaseSegDataset`` arguments (``indices``, ``serialize_data``,
                ``test_mode``, ``lazy_init``, ``max_refetch``, ``metainfo``).
        """

        def __init__(self,
                     num_samples: int = 100,
                     split: str = 'val',
                     seed: int = 0,
                     image_size: int = 96,
                     num_classes: int = 8,
                     min_objects: int = 2,
                     max_objects: int = 6,
                     clutter: bool = True,
                     noise_std: float = 3.0,
                     channel_order: str = 'bgr',
                     pipeline: Sequence[Union[dict, Callable]] = (),
                     metainfo: Optional[dict] = None,
                     reduce_zero_label: bool = False,
                     ignore_index: int = 255,
                     **kwargs) -> None:
            self._set_scene_params(num_samples, split, seed, image_size, num_classes,
                                   min_objects, max_objects, clutter, noise_std, channel_order)
            meta = synthetic_metainfo(self.num_classes)
            if metainfo:
                meta.update(metainfo)
            super().__init__(
                ann_file='',
                metainfo=meta,
                pipeline=_build_pipeline(pipeline, _SEG_TRANSFORMS),
                reduce_zero_label=reduce_zero_label,
                ignore_index=ignore_index,
                **kwargs)

        def load_data_list(self) -> List[dict]:
            """One small dict per image (no files)."""
            data_list = self._scene_list()
            for info in data_list:
                info['label_map'] = self.label_map
                info['reduce_zero_label'] = self.reduce_zero_label
                info['seg_fields'] = []
            return data_list

        def prepare_data(self, idx: int):
            """Generate image ``idx`` and its mask, then run the pipeline."""
            results, mask = self._fill(self.get_data_info(idx))
            if results['reduce_zero_label']:
                mask = mask.copy()
                mask[mask == 0] = 255
                mask = mask - 1
                mask[mask == 254] = 255
            if results.get('label_map') is not None:
                src = mask.copy()
                for old_id, new_id in results['label_map'].items():
                    mask[src == old_id] = new_id
            results['gt_seg_map'] = mask
            results['seg_fields'].append('gt_seg_map')
            return self.pipeline(results)

    DATASETS.register_module(module=SyntheticScenesSeg)


def write_ade20k_layout(root: str,
                        num_train: int,
                        num_val: int,
                        seed: int = 0,
                        size: int = 96,
                        num_classes: int = 8,
                        min_objects: int = 2,
                        max_objects: int = 6,
                        jpeg_quality: int = 95) -> Dict[str, int]:
    """Write generated scenes to disk in the ADE20K directory layout.

    Files: ``images/training/{i:08d}.jpg``, ``images/validation/{i:08d}.jpg`` (RGB JPEG) and
    ``annotations/training/{i:08d}.png``, ``annotations/validation/{i:08d}.png`` (single-channel
    PNG, class ids ``0..K``, 0 = background, a real class), plus ``synthetic_scenes.json`` with the
    generation parameters, classes and palette. Training image ``i`` is scene
    ``scene_seed(seed, 'train', i)``, validation image ``i`` is ``scene_seed(seed, 'val', i)``.

    Load with mmseg's ``BaseSegDataset(data_root=root, data_prefix=dict(img_path='images/training',
    seg_map_path='annotations/training'), img_suffix='.jpg', seg_map_suffix='.png',
    metainfo=synthetic_metainfo(K), reduce_zero_label=False)`` (not with ``ADE20KDataset``, whose
    ``reduce_zero_label=True`` would drop the background class).

    Args:
        root (str): output directory (created).
        num_train (int): number of training images (>= 0).
        num_val (int): number of validation images (>= 0).
        seed (int): data set seed. Defaults to 0.
        size (int): image side. Defaults to 96.
        num_classes (int): number of object classes K. Defaults to 8.
        min_objects (int): min objects per image. Defaults to 2.
        max_objects (int): max objects per image. Defaults to 6.
        jpeg_quality (int): JPEG quality in [1, 100]. Defaults to 95.

    Returns:
        dict: ``dict(train=num_train, val=num_val)``.
    """
    from PIL import Image

    num_train = _check_int('num_train', num_train, 0)
    num_val = _check_int('num_val', num_val, 0)
    jpeg_quality = _check_int('jpeg_quality', jpeg_quality, 1, 100)
    for split, folder, n in (('train', 'training', num_train), ('val', 'validation', num_val)):
        img_dir = osp.join(root, 'images', folder)
        ann_dir = osp.join(root, 'annotations', folder)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(n):
            img, mask = generate_scene(
                scene_seed(seed, split, i),
                size=size,
                num_classes=num_classes,
                min_objects=min_objects,
                max_objects=max_objects)
            Image.fromarray(img).save(
                osp.join(img_dir, f'{i:08d}.jpg'), quality=jpeg_quality, subsampling=0)
            Image.fromarray(mask).save(osp.join(ann_dir, f'{i:08d}.png'))
    meta = synthetic_metainfo(num_classes)
    info = dict(
        generator='cotap_mm.datasets.synthetic_scenes.generate_scene',
        seed=seed,
        size=size,
        num_classes=num_classes,
        min_objects=min_objects,
        max_objects=max_objects,
        num_train=num_train,
        num_val=num_val,
        classes=list(meta['classes']),
        palette=meta['palette'],
        descriptions=class_descriptions(num_classes),
        label_convention='class ids 0..K, 0 = background (a real class); '
        'use reduce_zero_label=False',
    )
    with open(osp.join(root, 'synthetic_scenes.json'), 'w') as f:
        json.dump(info, f, indent=2)
    return dict(train=num_train, val=num_val)

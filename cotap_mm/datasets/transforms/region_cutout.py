"""Region Collaborative Cutout (RCC) masks on the patch grid.

De-coupling dense SSL: `De-coupling and De-positioning Dense Self-supervised Learning
<https://arxiv.org/abs/2303.16947>`_ and its ICLR-2024 successor `Mind Your Augmentation: The Key
to Decoupling Dense Self-Supervised Learning <https://openreview.net/forum?id=WQYHbr36Fo>`_
(official code: github.com/ztt1024/denseSSL, ``loader.py``).

The recipe (the successor's ``--pred_shape rcc``), on an ``h x w`` patch grid:

1. 9 boxes, one per cell of a 3 x 3 grid: area fraction uniform in [0.12, 0.30] of the grid,
   aspect ratio (w/h) log-uniform in [0.5, 2], centre uniform in the central half of its cell,
   clipped to the grid.
2. From the largest box to the smallest: measure the fraction ``c`` already cut inside the box; if
   ``c > r``, un-cut the whole box and set ``c = 0``; then cut one rectangle of area
   ``(r - c) * |box|`` with the box's aspect ratio at a uniform position inside the box. Every box
   thus ends up with about the same cut fraction ``r`` ("collaborative": overlapping boxes share
   cuts).
3. ``r`` is iBOT's prediction ratio: one of ``pred_ratio`` (uniformly), jittered uniformly by
   ``+- pred_ratio_var``: with ``(0, 0.4)`` / ``(0, 0.2)`` half of the masks are empty and the
   others have ``r ~ U[0.2, 0.6]``.

Box convention: ``(x1, y1, x2, y2)`` integer patch indices, ``x2``/``y2`` exclusive, i.e. the box
covers ``mask[y1:y2, x1:x2]``.
"""
import math
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
from mmcv.transforms import BaseTransform
from mmpretrain.registry import TRANSFORMS

from cotap_mm.structures.boxes import sample_grid_box
from cotap_mm.structures.sampling import RNG, as_hw, check_range, rand_int, rand_uniform


__all__ = [
    'sample_cut_ratio', 'region_cutout_mask', 'RegionCollaborativeCutout'
]


def sample_cut_ratio(rng: RNG,
                     pred_ratio: Union[float, Sequence[float]] = (0.0, 0.4),
                     pred_ratio_var: Union[float, Sequence[float]] = (0.0, 0.2)) -> float:
    """iBOT's ``get_pred_ratio``: jitter every ``pred_ratio[i]`` by ``U[-var_i, var_i]`` (no jitter
    when ``var_i == 0``), then pick one of them uniformly.

    Args:
        rng: ``np.random.Generator``, ``np.random.RandomState`` or the ``np.random`` module.
        pred_ratio (float | Sequence[float]): centres, each in [0, 1). Defaults to (0, 0.4).
        pred_ratio_var (float | Sequence[float]): half-widths, ``var_i <= pred_ratio[i]``.
            Defaults to (0, 0.2).

    Returns:
        float: the cut ratio ``r``.
    """
    ratios = [float(pred_ratio)] if np.isscalar(pred_ratio) else [float(r) for r in pred_ratio]
    vars_ = ([float(pred_ratio_var)] if np.isscalar(pred_ratio_var) else
             [float(v) for v in pred_ratio_var])
    if not ratios or len(ratios) != len(vars_):
        raise ValueError(f'pred_ratio and pred_ratio_var must be non-empty and of equal length, '
                         f'got {pred_ratio!r} and {pred_ratio_var!r}')
    for r, v in zip(ratios, vars_):
        if not (0.0 <= v <= r and r + v < 1.0):
            raise ValueError('each pred_ratio r and pred_ratio_var v must satisfy 0 <= v <= r and '
                             f'r + v < 1, got r={r}, v={v}')
    jittered = [rand_uniform(rng, r - v, r + v) if v > 0 else r for r, v in zip(ratios, vars_)]
    return jittered[rand_int(rng, 0, len(jittered) - 1)]


def region_cutout_mask(grid_hw: Union[int, Sequence[int]],
                       rng: RNG,
                       ratio: Optional[float] = None,
                       pred_ratio: Union[float, Sequence[float]] = (0.0, 0.4),
                       pred_ratio_var: Union[float, Sequence[float]] = (0.0, 0.2),
                       num_cells: Union[int, Sequence[int]] = 3,
                       box_area: Tuple[float, float] = (0.12, 0.30),
                       box_aspect: Tuple[float, float] = (0.5, 2.0),
                       return_boxes: bool = False):
    """Region Collaborative Cutout mask (see the module docstring for the algorithm).

    Args:
        grid_hw (int | tuple[int, int]): patch grid (h, w), e.g. 14 for ViT-S/16 at 224 px.
        rng: ``np.random.Generator``, ``np.random.RandomState`` or the ``np.random`` module; the
            mask is a deterministic function of the RNG state.
        ratio (float, optional): the cut ratio ``r`` in [0, 1); None draws it with
            :func:`sample_cut_ratio` from ``pred_ratio`` / ``pred_ratio_var``.
        pred_ratio, pred_ratio_var: see :func:`sample_cut_ratio`.
        num_cells (int | tuple[int, int]): the box grid (rows, cols). Defaults to 3 (3 x 3).
        box_area (tuple[float, float]): box area fraction of the whole grid. Defaults to
            (0.12, 0.30).
        box_aspect (tuple[float, float]): box aspect-ratio (w/h) range. Defaults to (0.5, 2.0).
        return_boxes (bool): also return the boxes and ``r``. Defaults to False.

    Returns:
        np.ndarray: bool ``[h, w]``, True = cut. With ``return_boxes``: ``(mask, boxes, r)``,
        boxes int64 ``[rows * cols, 4]`` ``(x1, y1, x2, y2)`` in cell order (row-major).
    """
    h, w = as_hw(grid_hw, 'grid_hw')
    rows, cols = as_hw(num_cells, 'num_cells')
    r = sample_cut_ratio(rng, pred_ratio, pred_ratio_var) if ratio is None else float(ratio)
    if not 0.0 <= r < 1.0:
        raise ValueError(f'ratio must be in [0, 1), got {ratio!r}')
    boxes = []
    for i in range(rows):
        for j in range(cols):
            ch, cw = h / rows, w / cols
            boxes.append(
                sample_grid_box((h, w), rng, box_area, box_aspect,
                                center_y=(i * ch + ch / 4, i * ch + 3 * ch / 4),
                                center_x=(j * cw + cw / 4, j * cw + 3 * cw / 4)))
    boxes_np = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    mask = np.zeros((h, w), dtype=bool)
    if r > 0:
        areas = (boxes_np[:, 2] - boxes_np[:, 0]) * (boxes_np[:, 3] - boxes_np[:, 1])
        for k in np.argsort(-areas, kind='stable'):
            x1, y1, x2, y2 = (int(v) for v in boxes_np[k])
            bh, bw = y2 - y1, x2 - x1
            region = mask[y1:y2, x1:x2]
            cur = float(region.mean())
            if cur > r:
                region[...] = False
                cur = 0.0
            target = (r - cur) * bh * bw
            if target <= 0:
                continue
            ar = bw / bh
            th = min(max(int(round(math.sqrt(target / ar))), 0), bh)
            tw = min(max(int(round(math.sqrt(target * ar))), 0), bw)
            if th == 0 or tw == 0:
                continue
            ty = y1 + rand_int(rng, 0, bh - th)
            tx = x1 + rand_int(rng, 0, bw - tw)
            mask[ty:ty + th, tx:tx + tw] = True
    if return_boxes:
        return mask, boxes_np, r
    return mask


@TRANSFORMS.register_module()
class RegionCollaborativeCutout(BaseTransform):
    """Draw Region Collaborative Cutout masks (patch grid) for the views of one image.

    Paper: `De-coupling and De-positioning Dense Self-supervised Learning
    <https://arxiv.org/abs/2303.16947>`_; recipe of the successor (ICLR 2024, official
    ``loader.py``): see :func:`region_cutout_mask`. The masks serve as iBOT's masked-image-modeling
    masks and as the cut regions of the de-coupling branch
    (:mod:`cotap_mm.models.utils.decoupling`). The images are not changed: the cut-out happens
    on tokens inside the model.

    Adds ``results[key]``: bool ``[M, h, w]`` numpy array, one mask per view, and
    ``results[key + '_ratio']``: float32 ``[M]``, the cut ratio of each mask. Pack them with
    ``PackInputs(algorithm_keys=['rcc_mask'])`` or ``PackGeometricViews(algorithm_keys=[...])``.

    Args:
        grid_size (int | tuple[int, int], optional): patch grid (h, w). If None, derived from
            the first view's image shape and ``patch_size``.
        patch_size (int, optional): ViT patch size, used when ``grid_size`` is None.
        num_masks (int, optional): number of masks M. None: ``results['num_global_crops']`` when
            present, else the number of images in ``results['img']`` (1 for a single image).
        pred_ratio (float | Sequence[float]): Defaults to (0, 0.4).
        pred_ratio_var (float | Sequence[float]): Defaults to (0, 0.2).
        num_cells (int | tuple[int, int]): Defaults to 3.
        box_area (tuple[float, float]): Defaults to (0.12, 0.30).
        box_aspect (tuple[float, float]): Defaults to (0.5, 2.0).
        key (str): results key. Defaults to 'rcc_mask'.
        seed (int, optional): private ``np.random.RandomState(seed)`` (tests / debugging).
            Defaults to None: the global ``np.random`` state, which mmengine seeds per worker.
    """

    def __init__(self,
                 grid_size: Optional[Union[int, Sequence[int]]] = None,
                 patch_size: Optional[int] = None,
                 num_masks: Optional[int] = None,
                 pred_ratio: Union[float, Sequence[float]] = (0.0, 0.4),
                 pred_ratio_var: Union[float, Sequence[float]] = (0.0, 0.2),
                 num_cells: Union[int, Sequence[int]] = 3,
                 box_area: Tuple[float, float] = (0.12, 0.30),
                 box_aspect: Tuple[float, float] = (0.5, 2.0),
                 key: str = 'rcc_mask',
                 seed: Optional[int] = None) -> None:
        if grid_size is None and patch_size is None:
            raise ValueError('RegionCollaborativeCutout needs grid_size or patch_size')
        self.grid_size = None if grid_size is None else as_hw(grid_size, 'grid_size')
        if patch_size is not None and (isinstance(patch_size, bool)
                                       or not isinstance(patch_size, int) or patch_size < 1):
            raise ValueError(f'patch_size must be a positive int, got {patch_size!r}')
        self.patch_size = patch_size
        if num_masks is not None and (isinstance(num_masks, bool) or not isinstance(num_masks, int)
                                      or num_masks < 1):
            raise ValueError(f'num_masks must be a positive int or None, got {num_masks!r}')
        self.num_masks = num_masks
        # validate once (raises on bad values)
        sample_cut_ratio(np.random.RandomState(0), pred_ratio, pred_ratio_var)
        self.pred_ratio = pred_ratio
        self.pred_ratio_var = pred_ratio_var
        self.num_cells = as_hw(num_cells, 'num_cells')
        self.box_area = check_range(box_area, 'box_area', 0.0, 1.0)
        self.box_aspect = check_range(box_aspect, 'box_aspect', 0.0, math.inf)
        self.key = key
        self.seed = seed
        self._rng = np.random.RandomState(seed) if seed is not None else None

    @property
    def rng(self) -> RNG:
        return self._rng if self._rng is not None else np.random

    def _grid(self, results: Dict) -> Tuple[int, int]:
        if self.grid_size is not None:
            return self.grid_size
        img = results.get('img')
        first = img[0] if isinstance(img, (list, tuple)) else img
        if not hasattr(first, 'shape'):
            raise KeyError("RegionCollaborativeCutout(grid_size=None) needs results['img'] (an "
                           'image or a list of views) to derive the patch grid')
        h, w = first.shape[:2]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f'view size {(h, w)} is not a multiple of patch_size='
                             f'{self.patch_size}')
        return h // self.patch_size, w // self.patch_size

    def transform(self, results: Dict) -> Dict:
        if self.num_masks is not None:
            m = self.num_masks
        elif 'num_global_crops' in results:
            m = int(results['num_global_crops'])
        else:
            img = results.get('img')
            m = len(img) if isinstance(img, (list, tuple)) else 1
        grid = self._grid(results)
        masks, ratios = [], []
        for _ in range(m):
            mask, _, r = region_cutout_mask(grid, self.rng, None, self.pred_ratio,
                                            self.pred_ratio_var, self.num_cells, self.box_area,
                                            self.box_aspect, return_boxes=True)
            masks.append(mask)
            ratios.append(r)
        results[self.key] = np.stack(masks) if masks else np.zeros((0, *grid), dtype=bool)
        results[self.key + '_ratio'] = np.asarray(ratios, dtype=np.float32)
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(grid_size={self.grid_size}, '
                f'patch_size={self.patch_size}, num_masks={self.num_masks}, '
                f'pred_ratio={self.pred_ratio}, pred_ratio_var={self.pred_ratio_var}, '
                f'num_cells={self.num_cells}, box_area={self.box_area}, '
                f'box_aspect={self.box_aspect}, key={self.key!r})')

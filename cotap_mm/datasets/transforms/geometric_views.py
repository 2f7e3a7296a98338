"""Multi-crop views that remember where they came from.

CoTAP (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_) trains on the Leopart multi-crop
(`arXiv 2204.13101 <https://arxiv.org/abs/2204.13101>`_): 2 global crops of 224 px (scale
0.25-1) and 4 local crops of 96 px (scale 0.05-0.1), re-sampled until they overlap the global
crops, and the patch loss RoI-aligns the *overlap* of two crops in each crop's feature map.
mmpretrain's ``MultiView`` drops the crop geometry, so this transform samples the crops itself and
records, for every crop, its box in original-image pixels and whether it was flipped.

Box convention used throughout this module: ``(x1, y1, x2, y2)`` in continuous pixel coordinates of
the original image, pixel ``(i, j)`` covering ``[j, j + 1) x [i, i + 1)``; a crop ``box`` is
``img[y1:y2, x1:x2]`` and is resized so that ``[x1, x2)`` maps linearly onto ``[0, out_w)`` (the
half-pixel-centre convention of both PIL and OpenCV resizing, and of ``RoIAlign(aligned=True)``).
"""
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import mmcv
import numpy as np
from mmcv.transforms import BaseTransform
from mmpretrain.registry import TRANSFORMS

from cotap_mm.structures.boxes import box_area, box_intersection
from cotap_mm.structures.sampling import RNG, as_hw, check_range, rand_int, rand_uniform



def sample_crop_box(h: int,
                    w: int,
                    scale: Tuple[float, float],
                    ratio: Tuple[float, float],
                    rng: RNG = np.random,
                    max_attempts: int = 10) -> Tuple[float, float, float, float]:
    """Sample a RandomResizedCrop box, exactly as ``torchvision.transforms.RandomResizedCrop``.

    Area fraction uniform in ``scale``, aspect ratio (w/h) log-uniform in ``ratio``, integer size
    ``round(sqrt(area * r))``, integer offset uniform; after ``max_attempts`` failures a central
    crop clamped to ``ratio`` (torchvision's fallback). torchvision draws from torch's RNG; here a
    numpy RNG is used so that the dataloader seeding of mmengine applies.

    Args:
        h (int): Image height in pixels (> 0).
        w (int): Image width in pixels (> 0).
        scale (tuple[float, float]): Range of the crop area as a fraction of ``h * w``.
        ratio (tuple[float, float]): Range of the crop aspect ratio ``width / height``.
        rng: ``np.random.Generator``, ``np.random.RandomState`` or the ``np.random`` module.
            Defaults to ``np.random``.
        max_attempts (int): Tries before the central-crop fallback. Defaults to 10.

    Returns:
        tuple[float, float, float, float]: ``(x1, y1, x2, y2)`` with integer values, in pixels.
    """
    if not (isinstance(h, (int, np.integer)) and isinstance(w, (int, np.integer)) and h > 0
            and w > 0):
        raise ValueError(f'h and w must be positive ints, got h={h!r}, w={w!r}')
    scale = check_range(scale, 'scale', 0.0, 1.0)
    ratio = check_range(ratio, 'ratio')
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(max_attempts):
        target_area = area * rand_uniform(rng, scale[0], scale[1])
        aspect = math.exp(rand_uniform(rng, log_ratio[0], log_ratio[1]))
        cw = int(round(math.sqrt(target_area * aspect)))
        ch = int(round(math.sqrt(target_area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            y1 = rand_int(rng, 0, h - ch)
            x1 = rand_int(rng, 0, w - cw)
            return float(x1), float(y1), float(x1 + cw), float(y1 + ch)
    # fallback: central crop (torchvision)
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    y1, x1 = (h - ch) // 2, (w - cw) // 2
    return float(x1), float(y1), float(x1 + cw), float(y1 + ch)


def crop_and_resize(img: np.ndarray,
                    box: Sequence[float],
                    out_size: Union[int, Sequence[int]],
                    flip: bool = False,
                    interpolation: str = 'bilinear',
                    backend: str = 'pillow') -> np.ndarray:
    """Cut integer ``box`` out of ``img``, resize it to ``out_size`` and optionally flip it.

    Args:
        img (np.ndarray): ``H x W`` or ``H x W x C`` image.
        box (sequence[float]): ``(x1, y1, x2, y2)`` with integer values.
        out_size (int | tuple[int, int]): ``s`` or ``(h, w)``.
        flip (bool): Horizontal flip after resizing. Defaults to False.
        interpolation (str): ``mmcv.imresize`` interpolation. Defaults to 'bilinear'.
        backend (str): ``mmcv.imresize`` backend, 'pillow' or 'cv2'. Defaults to 'pillow'.

    Returns:
        np.ndarray: ``out_h x out_w (x C)`` crop, C-contiguous.
    """
    out_h, out_w = as_hw(out_size, 'out_size')
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    crop = img[y1:y2, x1:x2]
    if crop.size == 0:
        raise ValueError(f'box {tuple(box)} is empty or outside the image of shape {img.shape}')
    crop = mmcv.imresize(crop, (out_w, out_h), interpolation=interpolation, backend=backend)
    if flip:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


@TRANSFORMS.register_module()
class GeometricMultiView(BaseTransform):
    """Leopart/CoTAP multi-crop that records each crop's box and flip, with clean teacher copies.

    Used by CoTAP (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_), whose official code
    takes the Leopart crops (`arXiv 2204.13101 <https://arxiv.org/abs/2204.13101>`_).

    For each of ``num_global + num_local`` crops a RandomResizedCrop box is sampled
    (:func:`sample_crop_box`), cut from the original image and resized (:func:`crop_and_resize`);
    the geometric part is shared by the teacher and student copies of a crop, and the
    ``student_pipeline`` (colour jitter, grayscale, blur, ...) is applied to the student copy only.

    Overlap constraint (official code: crops re-sampled until they overlap the global crops, by
    at least 2 % of the image area between global crops and 1 % between a local and the global
    crops): global crop ``g`` is re-sampled until its intersection with every earlier global crop
    is ``>= min_overlap[0] * H * W``; each local crop until its intersection with every global
    crop (``local_overlap_mode='all'``, our reading of "overlaps the global crops") or with at
    least one (``'any'``) is ``>= min_overlap[1] * H * W``. After ``max_overlap_tries`` samples
    the candidate with the largest overlap is kept (so the transform never loops forever).

    Photometric augmentation of the student copies: the released code runs it on the GPU with one
    random draw per crop index for the whole batch, which ``batch_color=True`` (no
    ``student_pipeline``) leaves to the model's data preprocessor
    (:class:`~cotap_mm.datasets.data_preprocessor.CoTAPDataPreprocessor` with a
    :class:`~cotap_mm.datasets.batch_augments.PerViewColorAugment`); the option is a
    ``student_pipeline`` drawn per image and per crop (the usual per-sample augmentation).

    **Required keys:** ``img`` (``H x W x 3`` uint8, as ``LoadImageFromFile`` gives, BGR).

    **Modified keys:** ``img`` -> list of ``V = num_global + num_local`` student crops
    (globals first, then locals), ``img_shape`` -> list of per-crop ``(h, w)``.

    **Added keys:**

    - ``teacher_img``: list of clean crops (no ``student_pipeline``): the global crops
      (``teacher_views='global'``) or all crops (``'all'``).
    - ``teacher_view_indices``: ``np.ndarray[int64]`` of the crop indices ``teacher_img`` holds.
    - ``crop_boxes``: ``np.ndarray[float32]`` of shape ``[V, 4]``, ``(x1, y1, x2, y2)`` of every
      crop in original-image pixels (see the module docstring for the convention).
    - ``crop_flips``: ``np.ndarray[bool]`` of shape ``[V]``, horizontal flip of every crop
      (applied after resizing, to the teacher and student copy alike).
    - ``ori_shape``: ``(H, W)``; ``num_global_crops``, ``num_local_crops``: ints.
    - ``student_color``: where the student colour augmentation happens: ``'batch'``
      (``batch_color=True``: later, in the data preprocessor, which checks it has one),
      ``'pipeline'`` (``student_pipeline`` applied here) or ``'none'``.

    Args:
        num_global (int): Number of global crops. Defaults to 2.
        global_size (int | tuple[int, int]): Output size of global crops. Defaults to 224.
        global_scale (tuple[float, float]): Area range of global crops. Defaults to (0.25, 1.0).
        num_local (int): Number of local crops. Defaults to 4.
        local_size (int | tuple[int, int]): Output size of local crops. Defaults to 96.
        local_scale (tuple[float, float]): Area range of local crops. Defaults to (0.05, 0.1).
        ratio (tuple[float, float]): Aspect-ratio (w/h) range. Defaults to (3/4, 4/3).
        flip_prob (float): Probability of a horizontal flip per crop. Defaults to 0.0 (the
            official Leopart/CoTAP pipeline does not flip).
        min_overlap (tuple[float, float] | None): Minimal intersection, as a fraction of the image
            area, ``(between global crops, between a local and the global crops)``; None disables
            the constraint. Defaults to (0.02, 0.01).
        local_overlap_mode (str): 'all' or 'any' global crop must be overlapped by a local crop.
            Defaults to 'all'.
        max_overlap_tries (int): Samples per crop before keeping the best one. Defaults to 100.
        student_pipeline (list[dict | callable] | None): Transforms applied per crop to the
            student copy only, each to a dict ``{'img': crop, 'img_shape', 'crop_index',
            'is_global'}``. Defaults to None (student = teacher crop).
        batch_color (bool): the student colour augmentation runs on whole batches in the data
            preprocessor (released); needs an empty ``student_pipeline``. Defaults to False.
        teacher_views (str): 'global' or 'all'. Defaults to 'global'.
        interpolation (str): Resize interpolation. Defaults to 'bilinear'.
        backend (str): Resize backend, 'pillow' (antialiased, like the official torchvision-on-PIL
            pipeline) or 'cv2'. Defaults to 'pillow'.
        seed (int | None): If given, crops are drawn from a private ``np.random.RandomState(seed)``
            (for tests and debugging: with dataloader workers every worker would repeat the same
            sequence). Defaults to None: the global ``np.random`` state, which mmengine seeds per
            worker. The ``student_pipeline`` transforms use their own RNGs.
    """

    def __init__(self,
                 num_global: int = 2,
                 global_size: Union[int, Sequence[int]] = 224,
                 global_scale: Tuple[float, float] = (0.25, 1.0),
                 num_local: int = 4,
                 local_size: Union[int, Sequence[int]] = 96,
                 local_scale: Tuple[float, float] = (0.05, 0.1),
                 ratio: Tuple[float, float] = (3. / 4., 4. / 3.),
                 flip_prob: float = 0.0,
                 min_overlap: Optional[Tuple[float, float]] = (0.02, 0.01),
                 local_overlap_mode: str = 'all',
                 max_overlap_tries: int = 100,
                 student_pipeline: Optional[List[Union[dict, Any]]] = None,
                 batch_color: bool = False,
                 teacher_views: str = 'global',
                 interpolation: str = 'bilinear',
                 backend: str = 'pillow',
                 seed: Optional[int] = None) -> None:
        for name, val in (('num_global', num_global), ('num_local', num_local)):
            if not isinstance(val, int) or val < 0:
                raise ValueError(f'{name} must be a non-negative int, got {val!r}')
        if num_global + num_local == 0:
            raise ValueError('num_global + num_local must be at least 1, got 0')
        self.num_global = num_global
        self.num_local = num_local
        self.global_size = as_hw(global_size, 'global_size')
        self.local_size = as_hw(local_size, 'local_size')
        self.global_scale = check_range(global_scale, 'global_scale', 0.0, 1.0)
        self.local_scale = check_range(local_scale, 'local_scale', 0.0, 1.0)
        self.ratio = check_range(ratio, 'ratio')
        if not 0.0 <= float(flip_prob) <= 1.0:
            raise ValueError(f'flip_prob must be in [0, 1], got {flip_prob!r}')
        self.flip_prob = float(flip_prob)
        if min_overlap is not None:
            if (not isinstance(min_overlap, (tuple, list)) or len(min_overlap) != 2
                    or not all(0.0 <= float(v) <= 1.0 for v in min_overlap)):
                raise ValueError('min_overlap must be None or a pair of fractions in [0, 1] '
                                 f'(global-global, local-global), got {min_overlap!r}')
            min_overlap = (float(min_overlap[0]), float(min_overlap[1]))
        self.min_overlap = min_overlap
        if local_overlap_mode not in ('all', 'any'):
            raise ValueError("local_overlap_mode must be 'all' or 'any', "
                             f'got {local_overlap_mode!r}')
        self.local_overlap_mode = local_overlap_mode
        if not isinstance(max_overlap_tries, int) or max_overlap_tries < 1:
            raise ValueError(f'max_overlap_tries must be a positive int, got {max_overlap_tries!r}')
        self.max_overlap_tries = max_overlap_tries
        if teacher_views not in ('global', 'all'):
            raise ValueError(f"teacher_views must be 'global' or 'all', got {teacher_views!r}")
        if teacher_views == 'global' and num_global == 0:
            raise ValueError("teacher_views='global' needs num_global >= 1")
        self.teacher_views = teacher_views
        self.interpolation = interpolation
        self.backend = backend
        self.seed = seed
        self._rng = np.random.RandomState(seed) if seed is not None else None
        self.student_pipeline = []
        for t in student_pipeline or []:
            t = TRANSFORMS.build(t) if isinstance(t, dict) else t
            if not callable(t):
                raise TypeError(f'student_pipeline items must be transform configs or callables, '
                                f'got {type(t)}')
            self.student_pipeline.append(t)
        if not isinstance(batch_color, bool):
            raise TypeError(f'batch_color must be a bool, got {batch_color!r}')
        if batch_color and self.student_pipeline:
            raise ValueError('batch_color=True leaves the student colour augmentation to the data '
                             'preprocessor; a student_pipeline would augment twice, got '
                             f'{self.student_pipeline}')
        self.batch_color = batch_color

    @property
    def rng(self) -> RNG:
        return self._rng if self._rng is not None else np.random

    def sample_boxes(self, h: int, w: int) -> np.ndarray:
        """Sample all ``V`` crop boxes for an ``h x w`` image under the overlap constraint.

        Returns:
            np.ndarray: ``[V, 4]`` float32 boxes, globals first.
        """
        rng = self.rng
        area = float(h * w)
        boxes: List[Tuple[float, ...]] = []
        for v in range(self.num_global + self.num_local):
            is_global = v < self.num_global
            scale = self.global_scale if is_global else self.local_scale
            others = boxes[:v] if is_global else boxes[:self.num_global]
            thr = None
            if self.min_overlap is not None and others:
                thr = self.min_overlap[0] if is_global else self.min_overlap[1]
            best, best_score = None, -1.0
            for _ in range(self.max_overlap_tries if thr is not None else 1):
                box = sample_crop_box(h, w, scale, self.ratio, rng)
                if thr is None:
                    best = box
                    break
                fracs = box_area(box_intersection(np.asarray(others), np.asarray(box))) / area
                reduce = np.max if (not is_global and self.local_overlap_mode == 'any') else np.min
                score = float(reduce(fracs))
                if score > best_score:
                    best, best_score = box, score
                if score >= thr:
                    break
            boxes.append(best)
        return np.asarray(boxes, dtype=np.float32)

    def transform(self, results: Dict) -> Dict:
        img = results.get('img')
        if not isinstance(img, np.ndarray) or img.ndim not in (2, 3):
            raise TypeError("GeometricMultiView expects results['img'] to be an H x W (x C) "
                            f'numpy array, got {type(img)}')
        h, w = img.shape[:2]
        boxes = self.sample_boxes(h, w)
        num_views = len(boxes)
        flips = np.array([self.flip_prob > 0 and self.rng.rand() < self.flip_prob
                          for _ in range(num_views)], dtype=bool)
        clean, student = [], []
        for v in range(num_views):
            is_global = v < self.num_global
            size = self.global_size if is_global else self.local_size
            crop = crop_and_resize(img, boxes[v], size, bool(flips[v]), self.interpolation,
                                   self.backend)
            clean.append(crop)
            if self.student_pipeline:
                d = dict(img=crop.copy(), img_shape=crop.shape[:2], crop_index=v,
                         is_global=is_global)
                for t in self.student_pipeline:
                    d = t(d)
                    if d is None:
                        raise RuntimeError(f'student_pipeline transform {t!r} returned None')
                student.append(d['img'])
            else:
                student.append(crop.copy())
        teacher_idx = (np.arange(self.num_global) if self.teacher_views == 'global' else
                       np.arange(num_views)).astype(np.int64)
        results['img'] = student
        results['teacher_img'] = [clean[i] for i in teacher_idx]
        results['teacher_view_indices'] = teacher_idx
        results['img_shape'] = [c.shape[:2] for c in student]
        results['ori_shape'] = (h, w)
        results['crop_boxes'] = boxes
        results['crop_flips'] = flips
        results['num_global_crops'] = self.num_global
        results['num_local_crops'] = self.num_local
        results['student_color'] = 'batch' if self.batch_color else (
            'pipeline' if self.student_pipeline else 'none')
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_global={self.num_global}, '
                f'global_size={self.global_size}, global_scale={self.global_scale}, '
                f'num_local={self.num_local}, local_size={self.local_size}, '
                f'local_scale={self.local_scale}, ratio={self.ratio}, '
                f'flip_prob={self.flip_prob}, min_overlap={self.min_overlap}, '
                f'local_overlap_mode={self.local_overlap_mode!r}, '
                f'teacher_views={self.teacher_views!r}, '
                f'student_pipeline={self.student_pipeline}, batch_color={self.batch_color})')


__all__ = [
    'sample_crop_box', 'crop_and_resize', 'GeometricMultiView'
]

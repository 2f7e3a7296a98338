"""mmseg transforms for the released CoTAP linear-probe protocol.

Released CoTAP (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_, ``train_segmentation.py``)
trains the probe on horizontally flipped (p 0.5) random-resized crops of the original image and
label (scale 0.64-1, Cityscapes 0.36-1, aspect ratio 3/4-4/3; image bilinear, label nearest) and
scores it on images *and labels* squashed to 448 x 448 (label nearest). In mmseg:

* :class:`SegRandomResizedCrop` is the crop (after ``RandomFlip``);
* evaluation at the resized size needs ``LoadAnnotations`` before ``Resize`` (the label is resized,
  nearest) and :class:`SetOriShapeToImgShape` after it: mmseg's segmentors resize the predicted
  logits to ``ori_shape``, which must then be the resized shape the label has.

Both are registered in mmpretrain's ``TRANSFORMS``: ``type='mmpretrain.SegRandomResizedCrop'`` in
mmseg configs.
"""
from typing import Dict, Sequence, Tuple, Union

import numpy as np
from mmcv.transforms import BaseTransform
from mmpretrain.registry import TRANSFORMS

from cotap_mm.structures.sampling import as_hw, check_range
from .geometric_views import crop_and_resize, sample_crop_box

__all__ = ['SegRandomResizedCrop', 'SetOriShapeToImgShape']


@TRANSFORMS.register_module()
class SegRandomResizedCrop(BaseTransform):
    """RandomResizedCrop of an image and its segmentation maps with the same box.

    The box is ``torchvision.transforms.RandomResizedCrop``'s (:func:`sample_crop_box`, numpy RNG
    seeded per worker by mmengine); the image is resized with ``interpolation``, every map in
    ``seg_fields`` (``gt_seg_map``) with nearest neighbour, both with ``backend``.

    **Required keys:** ``img``; optional ``gt_seg_map`` / ``seg_fields``.
    **Modified keys:** ``img``, ``img_shape``, the seg maps. **Added keys:** ``crop_bbox``
    ``(x1, y1, x2, y2)``.

    Args:
        size (int | tuple[int, int]): output ``s`` or ``(h, w)``, e.g. 336 (released probe).
        scale (tuple[float, float]): crop area range, fraction of the image. Defaults to
            (0.64, 1.0) (released; Cityscapes 0.36-1).
        ratio (tuple[float, float]): aspect ratio (w/h) range. Defaults to (3/4, 4/3).
        interpolation (str): image interpolation. Defaults to 'bilinear'.
        backend (str): ``mmcv.imresize`` backend, 'pillow' (antialiased, like the released PIL /
            torchvision resize) or 'cv2'. Defaults to 'pillow'.
    """

    def __init__(self,
                 size: Union[int, Sequence[int]],
                 scale: Tuple[float, float] = (0.64, 1.0),
                 ratio: Tuple[float, float] = (3. / 4., 4. / 3.),
                 interpolation: str = 'bilinear',
                 backend: str = 'pillow') -> None:
        self.size = as_hw(size, 'SegRandomResizedCrop size')
        self.scale = check_range(scale, 'SegRandomResizedCrop scale', 0.0, 1.0)
        self.ratio = check_range(ratio, 'SegRandomResizedCrop ratio')
        if backend not in ('pillow', 'cv2'):
            raise ValueError(f"SegRandomResizedCrop backend must be 'pillow' or 'cv2', got "
                             f'{backend!r}')
        self.interpolation = interpolation
        self.backend = backend

    def transform(self, results: Dict) -> Dict:
        img = results['img']
        h, w = img.shape[:2]
        box = sample_crop_box(h, w, self.scale, self.ratio)
        results['img'] = crop_and_resize(img, box, self.size, interpolation=self.interpolation,
                                         backend=self.backend)
        for key in results.get('seg_fields', ['gt_seg_map']):
            seg = results.get(key)
            if seg is None:
                continue
            if seg.shape[:2] != (h, w):
                raise ValueError(f'SegRandomResizedCrop: {key} has shape {seg.shape[:2]}, the '
                                 f'image {(h, w)}')
            results[key] = crop_and_resize(seg, box, self.size, interpolation='nearest',
                                           backend=self.backend)
        results['img_shape'] = results['img'].shape[:2]
        results['crop_bbox'] = tuple(int(v) for v in box)
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(size={self.size}, scale={self.scale}, '
                f'ratio={self.ratio}, interpolation={self.interpolation!r}, '
                f'backend={self.backend!r})')


@TRANSFORMS.register_module()
class SetOriShapeToImgShape(BaseTransform):
    """Score at the resized size: ``ori_shape = img_shape``.

    mmseg's segmentors resize the predicted logits to ``ori_shape`` before the metric compares
    them with ``gt_sem_seg``; after ``LoadAnnotations`` -> ``Resize`` the label has the resized
    shape, so ``ori_shape`` must too (released CoTAP: images and labels at 448 x 448).

    **Required keys:** ``img_shape``; ``gt_seg_map`` (if present) must already have that shape.
    **Modified keys:** ``ori_shape``.
    """

    def transform(self, results: Dict) -> Dict:
        shape = tuple(results['img_shape'][:2])
        seg = results.get('gt_seg_map')
        if seg is not None and tuple(np.shape(seg)[:2]) != shape:
            raise ValueError(f'SetOriShapeToImgShape: gt_seg_map has shape '
                             f'{tuple(np.shape(seg)[:2])}, the image {shape}; put LoadAnnotations '
                             'before Resize so the label is resized with the image')
        results['ori_shape'] = shape
        return results

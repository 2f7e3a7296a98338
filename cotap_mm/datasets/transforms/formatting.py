"""Pack the output of :class:`GeometricMultiView` for ``SelfSupDataPreprocessor``."""
from typing import Dict, Sequence

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmpretrain.datasets.transforms.formatting import PackInputs
from mmpretrain.registry import TRANSFORMS
from mmpretrain.structures import DataSample


@TRANSFORMS.register_module()
class PackGeometricViews(BaseTransform):
    """Pack student views, clean teacher views and the crop geometry of one image.

    For CoTAP (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_) and other multi-crop dense
    methods that need the geometric correspondence between views; runs after
    :class:`~cotap_mm.datasets.transforms.geometric_views.GeometricMultiView`.

    **Layout** (one sample)::

        inputs = [student_0, ..., student_{V-1}, teacher_0, ..., teacher_{T-1}]

    each a ``Tensor[C, h, w]`` (uint8, the data preprocessor converts and normalises), student views
    in crop order (``num_global_crops`` global crops first, then the local crops), followed by the
    clean teacher copies of the crops listed in ``teacher_view_indices`` (by default the global
    crops). Teacher views travel in ``inputs`` (not in the data sample) so that
    ``SelfSupDataPreprocessor`` normalises them like the student views. With the
    ``default_collate`` collate function (required by ``SelfSupDataPreprocessor``, as in
    mmpretrain's self-supervised configs), the model receives ``inputs`` as a list of
    ``V + T`` tensors ``[B, C, h, w]``, one per view index, and ``data_samples`` as a list of
    ``B`` :class:`DataSample` with

    - data fields (moved to the model's device by the preprocessor):
      ``crop_boxes`` ``Tensor[V, 4]`` float32 ``(x1, y1, x2, y2)`` in original-image pixels,
      ``crop_flips`` ``Tensor[V]`` bool, ``teacher_view_indices`` ``Tensor[T]`` int64, plus
      ``algorithm_keys``;
    - metainfo: ``teacher_view_order`` (the same indices as a tuple, read by the models without
      a device sync), ``num_student_views`` (V), ``num_teacher_views`` (T), ``num_global_crops``,
      ``num_local_crops``, ``student_color`` (when ``GeometricMultiView`` set it: 'batch',
      'pipeline' or 'none'), and the ``meta_keys`` present (``ori_shape``, ``img_path``,
      ``sample_idx``, ...).

    So in the model: ``student = inputs[:V]``, ``teacher = inputs[V:]``, with
    ``V = data_samples[0].num_student_views``.

    **Required keys:** ``img`` (list of V arrays), ``teacher_img`` (list of T arrays),
    ``crop_boxes``, ``crop_flips``, ``num_global_crops``, ``num_local_crops``.
    ``teacher_view_indices`` defaults to ``range(T)``.

    Args:
        algorithm_keys (Sequence[str]): Extra result keys stored as data fields (converted to
            tensors when they are numpy arrays). Defaults to ().
        meta_keys (Sequence[str]): Result keys stored as metainfo when present. Defaults to
            ``('sample_idx', 'img_path', 'ori_shape')``.
    """

    def __init__(self,
                 algorithm_keys: Sequence[str] = (),
                 meta_keys: Sequence[str] = ('sample_idx', 'img_path', 'ori_shape')) -> None:
        self.algorithm_keys = tuple(algorithm_keys)
        self.meta_keys = tuple(meta_keys)

    def transform(self, results: Dict) -> Dict:
        for key in ('img', 'teacher_img', 'crop_boxes', 'crop_flips', 'num_global_crops',
                    'num_local_crops'):
            if key not in results:
                raise KeyError(f"PackGeometricViews needs results['{key}'] (run GeometricMultiView "
                               'first)')
        student, teacher = results['img'], results['teacher_img']
        if not isinstance(student, list) or not isinstance(teacher, list):
            raise TypeError("results['img'] and results['teacher_img'] must be lists of images, "
                            f"got {type(student)} and {type(teacher)}")
        num_views = len(student)
        boxes = torch.as_tensor(np.asarray(results['crop_boxes'], dtype=np.float32))
        flips = torch.as_tensor(np.asarray(results['crop_flips'], dtype=bool))
        if tuple(boxes.shape) != (num_views, 4) or tuple(flips.shape) != (num_views, ):
            raise ValueError(f'crop_boxes must be [{num_views}, 4] and crop_flips [{num_views}] '
                             f'for {num_views} student views, got {tuple(boxes.shape)} and '
                             f'{tuple(flips.shape)}')
        teacher_idx = torch.as_tensor(
            np.asarray(results.get('teacher_view_indices', np.arange(len(teacher))),
                       dtype=np.int64))
        if tuple(teacher_idx.shape) != (len(teacher), ):
            raise ValueError(f'teacher_view_indices must have {len(teacher)} entries, got '
                             f'{tuple(teacher_idx.shape)}')

        inputs = [PackInputs.format_input(x) for x in student + teacher]
        sample = DataSample()
        sample.set_field(boxes, 'crop_boxes')
        sample.set_field(flips, 'crop_flips')
        sample.set_field(teacher_idx, 'teacher_view_indices')
        for key in self.algorithm_keys:
            if key in results:
                val = results[key]
                sample.set_field(torch.from_numpy(val) if isinstance(val, np.ndarray) else val,
                                 key)
        sample.set_metainfo(
            dict(teacher_view_order=tuple(int(i) for i in teacher_idx),  # on the host
                 num_student_views=num_views,
                 num_teacher_views=len(teacher),
                 num_global_crops=int(results['num_global_crops']),
                 num_local_crops=int(results['num_local_crops'])))
        if 'student_color' in results:
            sample.set_metainfo(dict(student_color=str(results['student_color'])))
        for key in self.meta_keys:
            if key in results:
                sample.set_field(results[key], key, field_type='metainfo')
        return dict(inputs=inputs, data_samples=sample)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(algorithm_keys={self.algorithm_keys}, '
                f'meta_keys={self.meta_keys})')


__all__ = ['PackGeometricViews']

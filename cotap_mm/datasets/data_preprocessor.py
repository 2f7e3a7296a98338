"""``SelfSupDataPreprocessor`` plus batch augmentations of the student views (released CoTAP)."""
from typing import Any, Dict, List, Optional, Sequence, Union

from mmpretrain.models.utils import SelfSupDataPreprocessor
from mmpretrain.registry import BATCH_AUGMENTS, MODELS

from .batch_augments import PerViewColorAugment

__all__ = ['CoTAPDataPreprocessor', 'check_student_color']


def check_student_color(data_samples: Optional[Sequence[Any]], has_batch_color: bool) -> None:
    """Refuse a batch whose student colour augmentation would be missing or doubled.

    ``GeometricMultiView`` writes the metainfo ``student_color``: ``'batch'`` (left to a batch
    augmentation) needs ``has_batch_color``; ``'pipeline'`` (already applied per image) forbids it.

    Raises:
        ValueError: naming the mismatch and the config keys that fix it.
    """
    marks = {s.metainfo.get('student_color') for s in data_samples or ()
             if hasattr(s, 'metainfo')}
    if 'batch' in marks and not has_batch_color:
        raise ValueError('the data pipeline leaves the student colour augmentation to the data '
                         "preprocessor (GeometricMultiView batch_color=True, metainfo "
                         "student_color='batch') but model.data_preprocessor.batch_augments has no "
                         "PerViewColorAugment: add dict(type='PerViewColorAugment') or set "
                         'batch_color=False with a per-image student_pipeline')
    if 'pipeline' in marks and has_batch_color:
        raise ValueError('the data pipeline already colour-augments the student views per image '
                         "(GeometricMultiView student_pipeline, metainfo student_color='pipeline') "
                         'and model.data_preprocessor.batch_augments has a PerViewColorAugment: '
                         'that augments twice; drop one (batch_augments=None, or an empty '
                         'student_pipeline with batch_color=True)')


@MODELS.register_module()
class CoTAPDataPreprocessor(SelfSupDataPreprocessor):
    """Multi-view preprocessor that colour-augments whole student view batches while training.

    Released CoTAP (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_) jitters each crop
    index's batch with one parameter draw, on the GPU, the teacher's clean copies untouched
    (:class:`~cotap_mm.datasets.batch_augments.PerViewColorAugment`). Same as mmpretrain's
    ``SelfSupDataPreprocessor`` (to the device, channel conversion, float, normalisation), with
    ``batch_augments`` run in training between the float conversion and the normalisation, on RGB
    values in [0, 255] (views that are BGR after the channel conversion are flipped around them).
    Inference and ``training=False`` calls are unchanged. In training the ``student_color``
    metainfo of the batch must agree with the batch augmentations (:func:`check_student_color`).

    Args:
        mean, std (Sequence[float], optional): per-channel normalisation. Defaults to None.
        to_rgb, bgr_to_rgb, rgb_to_bgr (bool): channel conversion (as mmpretrain).
            Defaults to False.
        input_channel_order (str): channel order of the collated inputs before conversion,
            'bgr' (mmcv ``LoadImageFromFile``) or 'rgb'. Defaults to 'bgr'.
        batch_augments (dict | list[dict], optional): ``BATCH_AUGMENTS`` configs, each called as
            ``aug(inputs, data_samples) -> inputs`` in order (e.g.
            ``dict(type='PerViewColorAugment')``). Defaults to None (plain
            ``SelfSupDataPreprocessor``).
        **kwargs: other ``SelfSupDataPreprocessor`` arguments (``pad_size_divisor``, ...).
    """

    def __init__(self,
                 mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None,
                 to_rgb: bool = False,
                 bgr_to_rgb: bool = False,
                 rgb_to_bgr: bool = False,
                 input_channel_order: str = 'bgr',
                 batch_augments: Optional[Union[dict, List[dict]]] = None,
                 **kwargs) -> None:
        super().__init__(mean=mean, std=std, to_rgb=to_rgb, bgr_to_rgb=bgr_to_rgb,
                         rgb_to_bgr=rgb_to_bgr, **kwargs)
        if input_channel_order not in ('bgr', 'rgb'):
            raise ValueError(f"CoTAPDataPreprocessor: input_channel_order must be 'bgr' or 'rgb', "
                             f'got {input_channel_order!r}')
        self.input_channel_order = input_channel_order
        flip = self._channel_conversion
        self.augment_in_bgr = (input_channel_order == 'bgr') != flip
        if batch_augments is None:
            batch_augments = []
        elif isinstance(batch_augments, dict) or callable(batch_augments):
            batch_augments = [batch_augments]
        if not isinstance(batch_augments, (list, tuple)):
            raise TypeError(f'CoTAPDataPreprocessor: batch_augments must be a dict, a list of '
                            f'dicts or None, got {type(batch_augments).__name__}')
        self.batch_augments = [BATCH_AUGMENTS.build(a) if isinstance(a, dict) else a
                               for a in batch_augments]
        self.has_batch_color = any(isinstance(a, PerViewColorAugment)
                                   for a in self.batch_augments)

    def forward(self, data: Dict[str, Any], training: bool = False) -> Dict[str, Any]:
        """``{'inputs': views, 'data_samples': samples}`` on the device, augmented if training."""
        if not isinstance(data, dict):
            raise TypeError('CoTAPDataPreprocessor expects the default_collate dict '
                            f"{{'inputs': ..., 'data_samples': ...}}, got {type(data).__name__}")
        if training:
            check_student_color(data.get('data_samples'), self.has_batch_color)
        if not (training and self.batch_augments):
            return super().forward(data, training)
        inputs, data_samples = self.cast_data([data['inputs'], data.get('data_samples')])
        if not isinstance(inputs, list):
            raise TypeError('CoTAPDataPreprocessor: batch_augments need multi-view inputs (a list '
                            f'of [B, 3, H, W] views), got {type(inputs).__name__}')
        if self._channel_conversion:
            inputs = [x[:, [2, 1, 0], ...] for x in inputs]
        inputs = [x.float() for x in inputs]
        if self.augment_in_bgr:
            inputs = [x.flip(1) for x in inputs]
        for aug in self.batch_augments:
            inputs = aug(inputs, data_samples)
        if self.augment_in_bgr:
            inputs = [x.flip(1) for x in inputs]
        if self._enable_normalize:
            inputs = [(x - self.mean) / self.std for x in inputs]
        return {'inputs': inputs, 'data_samples': data_samples}

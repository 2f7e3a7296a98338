"""ImageNet-1k training images without labels, for CoTAP's image-level (CLS) terms."""
from typing import Optional, Union

from mmpretrain.registry import DATASETS

from .coco_unlabeled import UnlabeledImageDataset

__all__ = ['ImageNetUnlabeled']


@DATASETS.register_module()
class ImageNetUnlabeled(UnlabeledImageDataset):
    """ImageNet-1k train set (``train/<wnid>/*.JPEG``), labels ignored, optional neighbours.

    CoTAP (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_) feeds its CLS losses with
    ImageNet-1k (1,281,167 images) while COCO feeds the patch losses; every ImageNet image also
    comes with one of its 7 precomputed neighbours. The image list is a recursive scan of
    ``data_root/data_prefix`` (sorted) or ``ann_file`` (e.g. mmpretrain's ``meta/train.txt``; the
    label column is dropped). Items: see :class:`UnlabeledImageDataset`; ``source='imagenet'``.

    Args:
        data_root (str): Defaults to 'data/imagenet'.
        data_prefix (str | dict): Defaults to 'train'.
        ann_file (str): optional image list. Defaults to ''.
        neighbors_file (str, optional): neighbour file. Defaults to None.
        source_name (str): Defaults to 'imagenet'.
        **kwargs: see :class:`UnlabeledImageDataset`.
    """

    def __init__(self,
                 data_root: str = 'data/imagenet',
                 data_prefix: Union[str, dict] = 'train',
                 ann_file: str = '',
                 neighbors_file: Optional[str] = None,
                 source_name: str = 'imagenet',
                 **kwargs) -> None:
        super().__init__(
            data_root=data_root,
            data_prefix=data_prefix,
            ann_file=ann_file,
            neighbors_file=neighbors_file,
            source_name=source_name,
            **kwargs)

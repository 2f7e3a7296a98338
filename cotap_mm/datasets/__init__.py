from . import transforms  # noqa: F401
from .batch_augments import PerViewColorAugment
from .data_preprocessor import CoTAPDataPreprocessor
from .synthetic_scenes import SyntheticScenes, SyntheticScenesSeg
from .coco_unlabeled import COCOUnlabeled, UnlabeledImageDataset
from .collate import neighbor_collate
from .coco_stuff27 import COCOStuff27Dataset
from .imagenet_cls import ImageNetUnlabeled
from .mixed_dataset import MixedCOCOImageNet, PairedMixDataset

__all__ = ['SyntheticScenes', 'SyntheticScenesSeg',
           'COCOUnlabeled', 'UnlabeledImageDataset', 'neighbor_collate', 'ImageNetUnlabeled',
           'MixedCOCOImageNet', 'PairedMixDataset', 'COCOStuff27Dataset', 'PerViewColorAugment',
           'CoTAPDataPreprocessor']

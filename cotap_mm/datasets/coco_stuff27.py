"""COCO-Stuff-27: the 27 coarse COCO-Stuff classes used by IIC / STEGO / Leopart / CoTAP linear probes.

The 27 classes are the COCO-Stuff *supercategories* (12 thing + 15 stuff supercategories). The
fine -> coarse table below is STEGO's ``Coco.fine_to_coarse`` (https://github.com/mhamilton723/STEGO,
``src/data.py``; the same table is used by Leopart https://github.com/MkuuWaUjinga/leopart and by
CoTAP's evaluation code, which builds on STEGO's COCO-Stuff data). It follows
the official COCO-Stuff label hierarchy (https://github.com/nightrome/cocostuff, ``labels.md``):
``fine id = COCO category id - 1`` (0..181, 255 = unlabeled), i.e. the pixel values of COCO-Stuff's
``stuffthingmaps_trainval2017`` PNGs.

mmseg's ``COCOStuffDataset`` (171 classes) instead reads ``*_labelTrainIds.png`` written by mmseg's
``tools/dataset_converters/coco_stuff164k.py``, which drops the 11 thing ids that COCO never annotated
and renumbers the remaining 171 fine ids to 0..170 (:data:`COCOSTUFF171_FINE_IDS`). So the 171 -> 27
map is ``fine_to_coarse[COCOSTUFF171_FINE_IDS[train_id]]``.

STEGO/CoTAP evaluate COCO-Stuff-27 on *curated* image lists (IIC's ``Coco164kFull_Stuff_Coarse.txt``
for training, ``Coco164kFull_Stuff_Coarse_7.txt`` with 2,175 images for validation); pass them as
``ann_file`` (one image id per line, e.g. ``000000000139``). Without ``ann_file`` all images of the
folder are used.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from mmpretrain.registry import DATASETS
from mmseg.datasets import COCOStuffDataset
from mmseg.registry import DATASETS as SEG_DATASETS

__all__ = [
    'COCOSTUFF27_CLASSES', 'COCOSTUFF_FINE_TO_COARSE27', 'COCOSTUFF171_FINE_IDS',
    'cocostuff_label_lut', 'map_cocostuff_to_27', 'COCOStuff27Dataset'
]

#: The 27 coarse classes in STEGO's order: 12 thing supercategories, then 15 stuff supercategories.
#: ("food" and "furniture" exist both as thing and as stuff supercategories.)
COCOSTUFF27_CLASSES: Tuple[str, ...] = (
    'electronic', 'appliance', 'food-things', 'furniture-things', 'indoor', 'kitchen',
    'accessory', 'animal', 'outdoor', 'person', 'sports', 'vehicle', 'ceiling', 'floor',
    'food-stuff', 'furniture-stuff', 'rawmaterial', 'textile', 'wall', 'window', 'building',
    'ground', 'plant', 'sky', 'solid', 'structural', 'water')

#: Fine COCO-Stuff id (0..181, = COCO category id - 1) -> coarse id (0..26); STEGO ``fine_to_coarse``.
COCOSTUFF_FINE_TO_COARSE27: Dict[int, int] = {
    0: 9, 1: 11, 2: 11, 3: 11, 4: 11, 5: 11, 6: 11, 7: 11, 8: 11, 9: 8, 10: 8, 11: 8, 12: 8,
    13: 8, 14: 8, 15: 7, 16: 7, 17: 7, 18: 7, 19: 7, 20: 7, 21: 7, 22: 7, 23: 7, 24: 7,
    25: 6, 26: 6, 27: 6, 28: 6, 29: 6, 30: 6, 31: 6, 32: 6, 33: 10, 34: 10, 35: 10, 36: 10,
    37: 10, 38: 10, 39: 10, 40: 10, 41: 10, 42: 10, 43: 5, 44: 5, 45: 5, 46: 5, 47: 5, 48: 5,
    49: 5, 50: 5, 51: 2, 52: 2, 53: 2, 54: 2, 55: 2, 56: 2, 57: 2, 58: 2, 59: 2, 60: 2,
    61: 3, 62: 3, 63: 3, 64: 3, 65: 3, 66: 3, 67: 3, 68: 3, 69: 3, 70: 3, 71: 0, 72: 0,
    73: 0, 74: 0, 75: 0, 76: 0, 77: 1, 78: 1, 79: 1, 80: 1, 81: 1, 82: 1, 83: 4, 84: 4,
    85: 4, 86: 4, 87: 4, 88: 4, 89: 4, 90: 4, 91: 17, 92: 17, 93: 22, 94: 20, 95: 20, 96: 22,
    97: 15, 98: 25, 99: 16, 100: 13, 101: 12, 102: 12, 103: 17, 104: 17, 105: 23, 106: 15,
    107: 15, 108: 17, 109: 15, 110: 21, 111: 15, 112: 25, 113: 13, 114: 13, 115: 13, 116: 13,
    117: 13, 118: 22, 119: 26, 120: 14, 121: 14, 122: 15, 123: 22, 124: 21, 125: 21, 126: 24,
    127: 20, 128: 22, 129: 15, 130: 17, 131: 16, 132: 15, 133: 22, 134: 24, 135: 21, 136: 17,
    137: 25, 138: 16, 139: 21, 140: 17, 141: 22, 142: 16, 143: 21, 144: 21, 145: 25, 146: 21,
    147: 26, 148: 21, 149: 24, 150: 20, 151: 17, 152: 14, 153: 21, 154: 26, 155: 15, 156: 23,
    157: 20, 158: 21, 159: 24, 160: 15, 161: 24, 162: 22, 163: 25, 164: 15, 165: 20, 166: 17,
    167: 17, 168: 22, 169: 14, 170: 18, 171: 18, 172: 18, 173: 18, 174: 18, 175: 18, 176: 18,
    177: 26, 178: 26, 179: 19, 180: 19, 181: 24,
}

#: Fine ids never annotated in COCO (street sign, hat, shoe, eye glasses, plate, mirror, window, desk,
#: door, blender, hair brush); mmseg's converter drops them.
_UNUSED_FINE_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)

#: mmseg train id (0..170, ``*_labelTrainIds.png``) -> fine COCO-Stuff id (0..181).
COCOSTUFF171_FINE_IDS: Tuple[int, ...] = tuple(i for i in range(182) if i not in _UNUSED_FINE_IDS)

_LABEL_IDS = ('mmseg171', 'cocostuff182')

# the coarse palette: COCO-Stuff-27 colours of STEGO's visualisations are not fixed; use distinct ones
_PALETTE27 = [[int(c) for c in np.random.RandomState(27).randint(0, 255, 3)] for _ in range(27)]


def cocostuff_label_lut(label_ids: str = 'mmseg171', ignore_index: int = 255) -> np.ndarray:
    """Look-up table [256] (uint8) from label-PNG values to coarse ids 0..26.

    Args:
        label_ids (str): what the PNG values are: ``'mmseg171'`` (mmseg train ids 0..170,
            ``*_labelTrainIds.png``) or ``'cocostuff182'`` (fine ids 0..181, COCO-Stuff's
            ``stuffthingmaps``). Defaults to 'mmseg171'.
        ignore_index (int): value of every id without a coarse class (255, unused ids). Defaults to 255.

    Returns:
        np.ndarray: ``lut[v]`` = coarse id of value ``v``.
    """
    if label_ids not in _LABEL_IDS:
        raise ValueError(f'label_ids must be one of {_LABEL_IDS}, got {label_ids!r}')
    if not 0 <= ignore_index <= 255:
        raise ValueError(f'ignore_index must be in [0, 255], got {ignore_index}')
    lut = np.full(256, ignore_index, dtype=np.uint8)
    if label_ids == 'mmseg171':
        for train_id, fine in enumerate(COCOSTUFF171_FINE_IDS):
            lut[train_id] = COCOSTUFF_FINE_TO_COARSE27[fine]
    else:
        for fine, coarse in COCOSTUFF_FINE_TO_COARSE27.items():
            lut[fine] = coarse
    return lut


def map_cocostuff_to_27(label: np.ndarray, label_ids: str = 'mmseg171',
                        ignore_index: int = 255) -> np.ndarray:
    """Map a COCO-Stuff label map (uint8 values) to the 27 coarse classes; ids without a class -> ignore.

    Args:
        label (np.ndarray): integer label map, any shape, values in [0, 255].
        label_ids (str): see :func:`cocostuff_label_lut`.
        ignore_index (int): see :func:`cocostuff_label_lut`.

    Returns:
        np.ndarray: uint8 map of the same shape.
    """
    label = np.asarray(label)
    if not np.issubdtype(label.dtype, np.integer):
        raise TypeError(f'label must hold integer ids, got dtype {label.dtype}')
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f'label values must be in [0, 255], got [{label.min()}, {label.max()}]')
    return cocostuff_label_lut(label_ids, ignore_index)[label]


@DATASETS.register_module()
@SEG_DATASETS.register_module()
class COCOStuff27Dataset(COCOStuffDataset):
    """COCO-Stuff with the 27 coarse (supercategory) classes of IIC / STEGO / Leopart / CoTAP.

    Same files as mmseg's :class:`~mmseg.datasets.COCOStuffDataset` (``images/{train,val}2017/*.jpg``
    and ``annotations/{train,val}2017/*_labelTrainIds.png``); the 171 train ids are merged into 27
    classes through the dataset's ``label_map``, which mmseg's ``LoadAnnotations`` applies, so
    pipelines are the usual ones. Registered in mmseg's ``DATASETS`` (``type='COCOStuff27Dataset'``
    in mmseg configs, with ``custom_imports=dict(imports=['cotap_mm'])``) and mmpretrain's.

    Args:
        label_ids (str): ``'mmseg171'`` (default, ``*_labelTrainIds.png`` from mmseg's converter) or
            ``'cocostuff182'`` (COCO-Stuff's own ``stuffthingmaps`` PNGs, fine ids 0..181; set
            ``seg_map_suffix='.png'``).
        img_suffix (str): Defaults to '.jpg'.
        seg_map_suffix (str): Defaults to '_labelTrainIds.png'.
        **kwargs: other :class:`~mmseg.datasets.BaseSegDataset` arguments (``data_root``,
            ``data_prefix``, ``ann_file`` for the curated lists, ``pipeline``, ...).
    """
    METAINFO = dict(classes=COCOSTUFF27_CLASSES, palette=_PALETTE27)

    def __init__(self,
                 label_ids: str = 'mmseg171',
                 img_suffix: str = '.jpg',
                 seg_map_suffix: str = '_labelTrainIds.png',
                 **kwargs) -> None:
        if label_ids not in _LABEL_IDS:
            raise ValueError(f'label_ids must be one of {_LABEL_IDS}, got {label_ids!r}')
        if kwargs.get('reduce_zero_label'):
            raise ValueError('COCOStuff27Dataset needs reduce_zero_label=False (id 0 is "person")')
        self.label_ids = label_ids
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)

    def get_label_map(self, new_classes: Optional[Sequence] = None) -> Dict[int, int]:
        """PNG value -> coarse id for every valid PNG value (0..170 or 0..181; never-annotated fine ids
        -> 255); other values (255) are left as they are.

        ``metainfo`` overrides of ``classes`` are refused: the 27 classes are fixed by the mapping.
        """
        if new_classes is not None and tuple(new_classes) != COCOSTUFF27_CLASSES:
            raise ValueError('COCOStuff27Dataset has the fixed 27 classes '
                             f'{COCOSTUFF27_CLASSES}; got metainfo classes {tuple(new_classes)}')
        lut = cocostuff_label_lut(self.label_ids, ignore_index=255)
        num_values = len(COCOSTUFF171_FINE_IDS) if self.label_ids == 'mmseg171' else 182
        return {v: int(lut[v]) for v in range(num_values)}

    @staticmethod
    def coarse_classes() -> List[str]:
        return list(COCOSTUFF27_CLASSES)

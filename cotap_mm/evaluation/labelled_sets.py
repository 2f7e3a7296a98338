"""Small labelled segmentation sets read from their real on-disk layouts into arrays.

The dense protocols (:mod:`.linear_probe`, :mod:`.overclustering`, :mod:`.nn_retrieval`) take
``(images [N, S, S, 3] uint8 RGB, masks [N, S, S])``. :func:`load_seg_arrays` builds an mmseg
dataset from a config dict (``PascalVOCDataset``, ``COCOStuff27Dataset``, ``ADE20KDataset``,
``BaseSegDataset``, ``SyntheticScenesSeg``, ...), reads its images and label maps with mmseg's own
``LoadImageFromFile`` / ``LoadAnnotations`` (so ``label_map`` -- COCO-Stuff-27's 171 -> 27 merge --
and ``reduce_zero_label`` -- ADE20K's -- apply exactly as in mmseg's training) and squashes both to
``S x S`` (mmcv ``Resize(keep_ratio=False)``: bilinear images, nearest labels), the resolution at
which the protocols score (Leopart and Hummingbird squash VOC to 448 x 448 as well).
:func:`seg_dataset_cfg` gives the configs of the four layouts the tools know by name.
"""
import json
import os.path as osp
from typing import Dict, Optional, Tuple

import numpy as np

__all__ = ['SEG_DATASET_NAMES', 'seg_dataset_cfg', 'load_seg_arrays']

SEG_DATASET_NAMES = ('voc', 'coco-stuff27', 'ade20k', 'synthetic')

# (type, train / val (img folder, label folder, ann_file)) of the layouts known by name
_LAYOUTS: Dict[str, dict] = {
    # VOCdevkit/VOC2012: trainaug (mmseg's voc_aug converter: aug.txt + SegmentationClassAug), val
    'voc': dict(type='PascalVOCDataset',
                train=('JPEGImages', 'SegmentationClassAug', 'ImageSets/Segmentation/aug.txt'),
                val=('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation/val.txt')),
    # coco_stuff164k with mmseg's *_labelTrainIds.png, on STEGO's curated lists
    'coco-stuff27': dict(type='COCOStuff27Dataset',
                         train=('images/train2017', 'annotations/train2017',
                                'curated/train2017/Coco164kFull_Stuff_Coarse.txt'),
                         val=('images/val2017', 'annotations/val2017',
                              'curated/val2017/Coco164kFull_Stuff_Coarse_7.txt')),
    # ADEChallengeData2016 (reduce_zero_label=True: 150 classes)
    'ade20k': dict(type='ADE20KDataset',
                   train=('images/training', 'annotations/training', ''),
                   val=('images/validation', 'annotations/validation', '')),
    # tools/analysis_tools/make_synthetic_scenes.py: the ADE20K layout + synthetic_scenes.json
    'synthetic': dict(type='BaseSegDataset',
                      train=('images/training', 'annotations/training', ''),
                      val=('images/validation', 'annotations/validation', '')),
}


def seg_dataset_cfg(name: str, data_root: str, split: str,
                    ann_file: Optional[str] = None) -> dict:
    """mmseg dataset config of a known layout.

    Args:
        name (str): one of :data:`SEG_DATASET_NAMES`.
        data_root (str): the layout's root (``VOCdevkit/VOC2012``, ``coco_stuff164k``,
            ``ADEChallengeData2016``, or a folder of ``make_synthetic_scenes.py``).
        split (str): ``'train'`` (the memory / probe-training images) or ``'val'``.
        ann_file (str, optional): replaces the layout's image list (``''``: every image of the
            folder, e.g. COCO-Stuff without the curated lists). Defaults to None (the layout's).

    Returns:
        dict: a config for :func:`load_seg_arrays`.
    """
    if name not in _LAYOUTS:
        raise ValueError(f'dataset must be one of {SEG_DATASET_NAMES}, got {name!r}')
    if split not in ('train', 'val'):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if not osp.isdir(data_root):
        raise FileNotFoundError(f'data root of the {name} layout not found: {data_root}')
    lay = _LAYOUTS[name]
    img, seg, ann = lay[split]
    cfg = dict(type=lay['type'], data_root=data_root,
               data_prefix=dict(img_path=img, seg_map_path=seg),
               ann_file=ann if ann_file is None else ann_file)
    if cfg['ann_file'] and not osp.isfile(osp.join(data_root, cfg['ann_file'])):
        raise FileNotFoundError(f'{name} {split} image list not found: '
                                f'{osp.join(data_root, cfg["ann_file"])} (pass another list, or '
                                f"an empty one to use every image of {img})")
    if name == 'synthetic':
        from cotap_mm.datasets.synthetic_scenes import synthetic_metainfo
        meta = osp.join(data_root, 'synthetic_scenes.json')
        if not osp.isfile(meta):
            raise FileNotFoundError(f'{meta} not found: the synthetic layout is the one written by '
                                    'tools/analysis_tools/make_synthetic_scenes.py')
        with open(meta) as f:
            classes = json.load(f)['classes']
        cfg.update(img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=False,
                   metainfo=synthetic_metainfo(len(classes) - 1))
    return cfg


def load_seg_arrays(dataset_cfg: dict, image_size: int,
                    max_images: Optional[int] = None
                    ) -> Tuple[np.ndarray, np.ndarray, Tuple[str, ...]]:
    """Images and label maps of an mmseg dataset config, squashed to ``image_size``.

    Args:
        dataset_cfg (dict): mmseg dataset config (``type``, ``data_root``, ``data_prefix``,
            ``ann_file``, ...); its ``pipeline`` is replaced. Generated sets
            (``type='SyntheticScenesSeg'``, which load themselves) are read the same way.
        image_size (int): side ``S`` of the squashed images and labels.
        max_images (int, optional): the first ``max_images`` images of the dataset's (sorted)
            list. Defaults to None (all).

    Returns:
        tuple: images ``[N, S, S, 3]`` uint8 RGB, masks ``[N, S, S]`` uint8 (``255`` = ignore),
        the dataset's class names (C = their number).
    """
    from mmengine.registry import DefaultScope

    import cotap_mm.datasets  # noqa: F401  (registers COCOStuff27Dataset, SyntheticScenesSeg)
    from cotap_mm.datasets.synthetic_scenes import SyntheticScenesSeg
    from mmseg.registry import DATASETS

    if not isinstance(dataset_cfg, dict) or 'type' not in dataset_cfg:
        raise ValueError(f'dataset_cfg must be an mmseg dataset config dict with a type, got '
                         f'{dataset_cfg!r}')
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f'image_size must be a positive int, got {image_size!r}')
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f'max_images must be a positive int or None, got {max_images!r}')
    cfg = dict(dataset_cfg)
    with DefaultScope.overwrite_default_scope('mmseg'):
        cls = DATASETS.get(cfg['type'])
        if cls is None:
            raise KeyError(f"dataset type {cfg['type']!r} is not in mmseg's DATASETS")
        loads = [] if issubclass(cls, SyntheticScenesSeg) else [
            dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')]
        cfg['pipeline'] = loads + [
            dict(type='Resize', scale=(image_size, image_size), keep_ratio=False)]
        cfg.setdefault('serialize_data', False)  # (mmengine cannot serialise an empty list)
        ds = DATASETS.build(cfg)
        n = len(ds) if max_images is None else min(len(ds), max_images)
        if n == 0:
            raise ValueError(f"the dataset {cfg['type']} under {cfg.get('data_root')!r} "
                             f"({cfg.get('data_prefix')}, ann_file {cfg.get('ann_file')!r}) "
                             'holds no image')
        images, masks = [], []
        for i in range(n):
            item = ds[i]
            img = item['img']
            if img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"{item.get('img_path', i)}: expected a colour image, got shape "
                                 f'{img.shape}')
            images.append(np.ascontiguousarray(img[..., ::-1]))  # BGR -> RGB
            masks.append(item['gt_seg_map'].astype(np.uint8))
    return np.stack(images), np.stack(masks), tuple(ds.metainfo['classes'])

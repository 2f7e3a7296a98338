"""Tiny segmentation / depth data sets on disk in the real layouts mmseg's datasets read, and a tiny
pretrain checkpoint, for the mmseg benchmark tests (tests/test_benchmarks/test_mmseg_*.py).

Images are generated scenes (:func:`cotap_mm.datasets.synthetic_scenes.generate_scene`), so labels
and images agree; each writer maps the scene's object classes 1..K to ids of the target data set.
"""
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from cotap_mm.datasets.synthetic_scenes import generate_scene, scene_seed, write_ade20k_layout

__all__ = [
    'TINY_ARCH', 'write_ade20k', 'write_voc_aug', 'write_coco_stuff', 'write_cityscapes', 'write_nyu',
    'write_pretrain_checkpoint', 'build_tiny_backbone', 'shrink_seg_config'
]

#: tiny CoTAPViT arch used by the benchmark tests (embed 32, 4 blocks -- Feature2Pyramid needs 4 outputs -- 2 heads)
TINY_ARCH = dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=64)


def _scene(seed: int, split: str, i: int, size: int, num_classes: int):
    img, mask = generate_scene(scene_seed(seed, split, i), size=size, num_classes=num_classes,
                               min_objects=2, max_objects=4)
    return img, mask


def _remap(mask: np.ndarray, ids: Sequence[int], background: int) -> np.ndarray:
    """Scene mask (0 = background, k = object class k) -> data set ids: 0 -> background, k -> ids[k-1]."""
    lut = np.array([background] + list(ids), dtype=np.uint8)
    return lut[mask]


def _save_jpg(arr: np.ndarray, path: str) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, quality=95, subsampling=0)


def _save_png(arr: np.ndarray, path: str, palette: Optional[List[int]] = None) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    im = Image.fromarray(arr)
    if palette is not None:
        im = im.convert('P')
        im.putpalette(palette)
    im.save(path)


def write_ade20k(root: str, num_train: int = 4, num_val: int = 2, size: int = 64, seed: int = 0) -> str:
    """ADEChallengeData2016 layout: images/{training,validation}/*.jpg, annotations/.../*.png
    (values 0..8, 0 = 'other', ignored by ADE20KDataset's reduce_zero_label)."""
    write_ade20k_layout(root, num_train, num_val, seed=seed, size=size, num_classes=8)
    return root


def _voc_palette() -> List[int]:
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def write_voc_aug(root: str, num_train: int = 4, num_val: int = 2, size: int = 64,
                  seed: int = 0) -> Dict[str, List[str]]:
    """VOCdevkit/VOC2012 layout: JPEGImages/*.jpg, SegmentationClass/*.png (palette PNGs, as VOC),
    SegmentationClassAug/*.png (grey PNGs, as mmseg's voc_aug converter writes) and
    ImageSets/Segmentation/{train,val,aug}.txt (aug = trainaug). Class ids 0..20 (0 = background),
    object borders 255 like VOC. ``root`` is the VOC2012 directory."""
    pal = _voc_palette()
    names = {'train': [], 'val': []}
    ids = [15, 7, 12, 3, 20, 1, 9, 18]  # person, car, dog, bird, tvmonitor, aeroplane, chair, sofa
    for split, n in (('train', num_train), ('val', num_val)):
        for i in range(n):
            name = f'2007_{split[:2]}{i:04d}'
            img, mask = _scene(seed, split, i, size, 8)
            lab = _remap(mask, ids, 0)
            # VOC's 'void' border around objects
            edge = np.zeros_like(mask, dtype=bool)
            edge[:-1] |= mask[:-1] != mask[1:]
            edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
            lab[edge] = 255
            _save_jpg(img, osp.join(root, 'JPEGImages', name + '.jpg'))
            _save_png(lab, osp.join(root, 'SegmentationClass', name + '.png'), palette=pal)
            _save_png(lab, osp.join(root, 'SegmentationClassAug', name + '.png'))
            names[split].append(name)
    sets = osp.join(root, 'ImageSets', 'Segmentation')
    os.makedirs(sets, exist_ok=True)
    for fname, lst in (('train.txt', names['train']), ('aug.txt', names['train']),
                       ('val.txt', names['val'])):
        with open(osp.join(sets, fname), 'w') as f:
            f.write('\n'.join(lst) + '\n')
    return names


#: scene classes 1..8 -> mmseg COCO-Stuff train ids: person, car, dog, bottle, pizza, grass,
#: sky-other, wall-concrete
COCO_TRAIN_IDS = (0, 2, 16, 39, 53, 123, 156, 165)


def write_coco_stuff(root: str, num_train: int = 4, num_val: int = 2, size: int = 64,
                     seed: int = 0, curated: bool = True) -> Dict[str, List[str]]:
    """coco_stuff164k layout: images/{train,val}2017/{id:012d}.jpg and
    annotations/{train,val}2017/{id:012d}_labelTrainIds.png (mmseg train ids 0..170; background of
    the scenes = 'wall-other' (train id 167), borders 255); with ``curated``, STEGO-style curated
    lists curated/{train,val}2017/Coco164kFull_Stuff_Coarse{,_7}.txt holding all but the last image
    of each split (so the tests can check that the lists are honoured)."""
    names = {'train': [], 'val': []}
    for split, n in (('train', num_train), ('val', num_val)):
        for i in range(n):
            name = f'{(1000 if split == "val" else 0) + i + 1:012d}'
            img, mask = _scene(seed, split, i, size, 8)
            lab = _remap(mask, COCO_TRAIN_IDS, 167)
            _save_jpg(img, osp.join(root, 'images', f'{split}2017', name + '.jpg'))
            _save_png(lab, osp.join(root, 'annotations', f'{split}2017', name + '_labelTrainIds.png'))
            names[split].append(name)
    if curated:
        for split, fname in (('train', 'Coco164kFull_Stuff_Coarse.txt'),
                             ('val', 'Coco164kFull_Stuff_Coarse_7.txt')):
            d = osp.join(root, 'curated', f'{split}2017')
            os.makedirs(d, exist_ok=True)
            with open(osp.join(d, fname), 'w') as f:
                f.write('\n'.join(names[split][:-1]) + '\n')
    return names


def write_cityscapes(root: str, num_train: int = 2, num_val: int = 2, size: int = 32,
                     seed: int = 0) -> Dict[str, List[str]]:
    """cityscapes layout: leftImg8bit/{train,val}/{city}/{city}_000000_{i:06d}_leftImg8bit.png and
    gtFine/{train,val}/{city}/..._gtFine_labelTrainIds.png (train ids 0..18, background = road (0)).
    Images are 2:1 (two scenes side by side, ``size`` x ``2 size``) like Cityscapes' 1024 x 2048."""
    names = {'train': [], 'val': []}
    ids = [11, 13, 2, 8, 10, 5, 6, 18]  # person, car, building, vegetation, sky, pole, light, bicycle
    for split, n in (('train', num_train), ('val', num_val)):
        city = 'aachen' if split == 'train' else 'frankfurt'
        for i in range(n):
            imgs, labs = zip(*(_scene(seed, split, 2 * i + j, size, 8) for j in range(2)))
            img = np.concatenate(imgs, axis=1)
            lab = _remap(np.concatenate(labs, axis=1), ids, 0)
            stem = f'{city}_000000_{i:06d}'
            _save_png(img, osp.join(root, 'leftImg8bit', split, city, stem + '_leftImg8bit.png'))
            _save_png(lab, osp.join(root, 'gtFine', split, city, stem + '_gtFine_labelTrainIds.png'))
            names[split].append(stem)
    return names


def write_nyu(root: str, num_train: int = 4, num_test: int = 2, size: int = 64,
              seed: int = 0) -> Dict[str, List[str]]:
    """nyu layout of mmseg's NYUDataset: images/{train,test}/{scene}_{i:05d}.jpg and
    annotations/{train,test}/{scene}_{i:05d}.png (uint16 depth in millimetres, 0 = invalid).
    Depth = 1 m + 0.4 m per scene class + a horizontal ramp, with a few invalid pixels."""
    names = {'train': [], 'test': []}
    for split, n in (('train', num_train), ('test', num_test)):
        for i in range(n):
            name = f'{"bedroom" if i % 2 == 0 else "kitchen"}_{i:05d}'
            img, mask = _scene(seed, split, i, size, 8)
            ramp = np.linspace(0, 1500, size, dtype=np.float64)[None, :]
            depth = 1000 + 400 * mask.astype(np.float64) + ramp
            depth[:2, :2] = 0
            _save_jpg(img, osp.join(root, 'images', split, name + '.jpg'))
            d16 = depth.astype(np.uint16)
            path = osp.join(root, 'annotations', split, name + '.png')
            os.makedirs(osp.dirname(path), exist_ok=True)
            Image.fromarray(d16).save(path)
            names[split].append(name)
    return names


def build_tiny_backbone(patch_size: int = 16, img_size: int = 64, **kwargs) -> torch.nn.Module:
    """The tiny :class:`~cotap_mm.models.backbones.CoTAPViT` of the tests."""
    from cotap_mm.models.backbones import CoTAPViT
    return CoTAPViT(arch=dict(TINY_ARCH), patch_size=patch_size, img_size=img_size, **kwargs)


def write_pretrain_checkpoint(path: str, patch_size: int = 16, img_size: int = 64,
                              seed: int = 0) -> Dict[str, torch.Tensor]:
    """A CoTAP-like pretrain checkpoint (``state_dict`` + ``meta``) of the tiny backbone.

    Every backbone tensor gets random values (so default initialisation can never match them);
    ``teacher.backbone.*`` holds *different* values, plus ``neck.*`` / ``patch_head.*`` keys; only
    ``backbone.*`` may arrive in a downstream backbone loaded with ``prefix='backbone.'``.

    Returns:
        dict: the backbone state dict (without prefix) that was written.
    """
    g = torch.Generator().manual_seed(seed)
    bb = build_tiny_backbone(patch_size=patch_size, img_size=img_size)
    sd = {k: torch.randn(v.shape, generator=g) * 0.05 + (1.0 if k.endswith('ln1.weight') else 0.)
          for k, v in bb.state_dict().items()}
    state = {f'backbone.{k}': v for k, v in sd.items()}
    state.update({f'teacher.backbone.{k}': v + 1.0 for k, v in sd.items()})
    state['neck.prototypes'] = torch.randn(4, TINY_ARCH['embed_dims'], 3, 3, generator=g)
    state['patch_head.mlp.0.weight'] = torch.randn(8, 2 * TINY_ARCH['embed_dims'], generator=g)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    torch.save({'state_dict': state, 'meta': {'note': 'tiny CoTAP pretrain for tests'}}, path)
    return sd


def _shrink_pipeline(pipeline: list, train_px: int, test_px: int) -> None:
    for t in pipeline:
        typ = t.get('type')
        if typ == 'RandomResize':
            t['scale'] = (train_px, train_px) if not t.get('keep_ratio', False) else (4 * train_px,
                                                                                       train_px)
        elif typ == 'RandomCrop':
            t['crop_size'] = (train_px, train_px)
        elif typ == 'mmpretrain.SegRandomResizedCrop':
            t['size'] = train_px
        elif typ == 'Resize':
            t['scale'] = (test_px, test_px) if not t.get('keep_ratio', False) else (4 * test_px,
                                                                                   test_px)


def _shrink_dataset(ds: dict, data_root: str, train_px: int, test_px: int) -> None:
    if 'datasets' in ds:
        for d in ds['datasets']:
            _shrink_dataset(d, data_root, train_px, test_px)
        return
    if 'dataset' in ds:  # wrappers (RepeatDataset, ...)
        _shrink_dataset(ds['dataset'], data_root, train_px, test_px)
        return
    ds['data_root'] = data_root
    _shrink_pipeline(ds.get('pipeline', []), train_px, test_px)


def shrink_seg_config(cfg, data_root: str, pretrain: str, work_dir: str, train_px: int = 32,
                      test_px: int = 48, iters: int = 2, batch_size: int = 2):
    """Make a benchmark config tiny and CPU-runnable, keeping its structure (pipelines, model types).

    Tiny backbone (:data:`TINY_ARCH`, patch 16, ``img_size`` 64 like :func:`write_pretrain_checkpoint`),
    heads resized to it, frozen_stages (if the whole backbone was frozen) = the tiny depth, crops
    ``train_px``, test resizes ``test_px``, ``iters`` iterations with validation at the end,
    ``num_workers=0``, checkpoint ``pretrain``.
    """
    C, L = TINY_ARCH['embed_dims'], TINY_ARCH['num_layers']
    bb = cfg.model.backbone
    was_frozen = bb.get('frozen_stages', 0) > 0 and bb['frozen_stages'] >= 12
    bb.arch = dict(TINY_ARCH)
    bb.patch_size = 16
    bb.img_size = 64
    bb.init_cfg.checkpoint = pretrain
    if was_frozen:
        bb.frozen_stages = L
    if isinstance(bb.get('out_indices'), (list, tuple)) and len(bb.out_indices) == 4:
        bb.out_indices = tuple(range(L))
    if 'neck' in cfg.model and cfg.model.neck is not None:
        cfg.model.neck.embed_dim = C
    head = cfg.model.decode_head
    if head.type == 'FCNHead':
        head.in_channels = C
        head.channels = C
    elif head.type == 'UPerHead':
        head.in_channels = [C] * 4
        head.channels = 16
    elif head.type == 'VPDDepthHead':
        head.in_channels = [C] * 4
        head.embed_dim = 16
        head.feature_dim = 128
    if cfg.model.get('auxiliary_head'):
        cfg.model.auxiliary_head.in_channels = C
        cfg.model.auxiliary_head.channels = 16
    cfg.model.data_preprocessor.size = (train_px, train_px)
    tc = cfg.model.get('test_cfg') or {}
    if 'crop_size' in tc:
        tc['crop_size'] = (train_px, train_px)
        tc['stride'] = (train_px // 2, train_px // 2)
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(name)
        loader.num_workers = 0
        loader.persistent_workers = False
        loader.batch_size = batch_size if name == 'train_dataloader' else 1
        _shrink_dataset(loader.dataset, data_root, train_px, test_px)
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters
    cfg.param_scheduler = [s for s in (cfg.get('param_scheduler') or [])
                           if s.get('type') != 'LinearLR']
    for s in cfg.param_scheduler:
        s['begin'], s['end'] = 0, iters
    cfg.default_hooks.checkpoint.interval = iters
    cfg.default_hooks.logger.interval = 1
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=0)
    # mmseg's runtime names its visualizer 'visualizer' (a per-process singleton): a unique name lets
    # several runs share one process, each writing vis_data/ to its own work_dir
    if cfg.get('visualizer'):
        cfg.visualizer.name = f'visualizer_{osp.basename(osp.normpath(work_dir))}'
    return cfg

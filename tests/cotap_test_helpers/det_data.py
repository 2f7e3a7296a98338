"""A tiny COCO instance-segmentation dataset on disk, in the real ``data/coco`` layout.

``write_tiny_coco(root)`` writes::

    root/data/coco/train2017/*.jpg
    root/data/coco/val2017/*.jpg
    root/data/coco/annotations/instances_train2017.json
    root/data/coco/annotations/instances_val2017.json

Each image holds a few filled shapes drawn in flat colours on a noisy background; each shape is one
annotation with its polygon ``segmentation``, its ``bbox`` ([x, y, w, h] of the polygon), ``area``
(polygon area) and ``iscrowd=0``. Categories: ``TINY_COCO_CLASSES`` (ids 1 and 2), so configs set
``metainfo=dict(classes=TINY_COCO_CLASSES)`` and ``num_classes=2``.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

TINY_COCO_CLASSES = ('square', 'triangle')
# non-square sizes (w, h) on purpose: the ViT's position embedding must handle them
_SIZES = ((128, 96), (96, 128), (112, 112))


def _polygon(kind: str, x: float, y: float, s: float) -> List[Tuple[float, float]]:
    if kind == 'square':
        return [(x, y), (x + s, y), (x + s, y + s), (x, y + s)]
    return [(x + s / 2, y), (x + s, y + s), (x, y + s)]


def _polygon_area(poly: Sequence[Tuple[float, float]]) -> float:
    xs = np.array([p[0] for p in poly])
    ys = np.array([p[1] for p in poly])
    return float(0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))


def _write_split(root: str, split: str, num_images: int, rng: np.random.Generator,
                 first_ann_id: int) -> Dict:
    img_dir = osp.join(root, f'{split}2017')
    os.makedirs(img_dir, exist_ok=True)
    images, annotations = [], []
    ann_id = first_ann_id
    for i in range(num_images):
        w, h = _SIZES[i % len(_SIZES)]
        img_id = i + 1
        arr = rng.integers(90, 140, size=(h, w, 3), dtype=np.uint8)
        img = Image.fromarray(arr)
        draw = ImageDraw.Draw(img)
        for j in range(2 + i % 2):
            cat = 1 + (i + j) % 2
            kind = TINY_COCO_CLASSES[cat - 1]
            s = float(rng.integers(24, 40))
            x = float(rng.integers(0, w - int(s)))
            y = float(rng.integers(0, h - int(s)))
            poly = _polygon(kind, x, y, s)
            colour = (230, 40, 40) if cat == 1 else (40, 60, 230)
            draw.polygon(poly, fill=colour)
            xs = [p[0] for p in poly]
            ys = [p[1] for p in poly]
            annotations.append(
                dict(id=ann_id, image_id=img_id, category_id=cat, iscrowd=0,
                     segmentation=[[c for p in poly for c in p]],
                     bbox=[min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                     area=_polygon_area(poly)))
            ann_id += 1
        file_name = f'{img_id:012d}.jpg'
        img.save(osp.join(img_dir, file_name), quality=95)
        images.append(dict(id=img_id, file_name=file_name, width=w, height=h))
    categories = [dict(id=k + 1, name=name, supercategory='shape')
                  for k, name in enumerate(TINY_COCO_CLASSES)]
    return dict(images=images, annotations=annotations, categories=categories)


def write_tiny_coco(root: str, num_train: int = 2, num_val: int = 2, seed: int = 0) -> str:
    """Write the dataset under ``root/data/coco`` and return that directory.

    Args:
        root (str): the directory a config's ``data_root='data/coco/'`` is relative to.
        num_train (int): number of training images. Defaults to 2.
        num_val (int): number of validation images. Defaults to 2.
        seed (int): shapes, positions and background noise. Defaults to 0.
    """
    coco = osp.join(root, 'data', 'coco')
    os.makedirs(osp.join(coco, 'annotations'), exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, num, first in (('train', num_train, 1), ('val', num_val, 1000)):
        ann = _write_split(coco, split, num, rng, first)
        with open(osp.join(coco, 'annotations', f'instances_{split}2017.json'), 'w') as f:
            json.dump(ann, f)
    return coco

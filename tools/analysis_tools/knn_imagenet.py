"""ImageNet weighted k-NN accuracy of a checkpoint's frozen CLS features (DINO / CoTAP protocol).

Reads the folder layout ``DATA_ROOT/{train,val}/<wnid>/*.JPEG`` (classes = the sorted train
folders; every val folder must be one of them), resizes the shorter side to ``--resize`` (bicubic)
and centre-crops ``--image-size`` (DINO's evaluation transform: 256 / 224), extracts the CLS token
(``C``, or CoTAP's 2C filtered CLS with ``--features 2C``) and scores the weighted k-NN vote of
``cotap_mm/evaluation/knn_classify.py`` with the given ``--k`` / ``--temperature``. ``--sweep``
also scores a grid of k and T and reports the best, which is selected on the validation set
itself (optimistic; the released CoTAP code does the same).

Example::

    python tools/analysis_tools/knn_imagenet.py CONFIG CKPT --data-root data/imagenet \
        --device cuda --batch-size 256 --out-json knn.json
"""
import argparse
import json
import os
import os.path as osp
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple


import numpy as np
import torch
from mmengine.config import DictAction
from mmengine.logging import MMLogger
from PIL import Image

from cotap_mm.evaluation.frozen_model import load_frozen_model
from cotap_mm.evaluation.knn_classify import (build_cls_feature_extractor,
                                              knn_accuracy, knn_sweep)

IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='ImageNet weighted k-NN of frozen CLS features')
    p.add_argument('config')
    p.add_argument('checkpoint', help="checkpoint file, or 'none' for random initialisation")
    p.add_argument('--data-root', default='data/imagenet',
                   help='folder with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG')
    p.add_argument('--max-per-class', type=int, default=None,
                   help='first N training images of every class (a subset)')
    p.add_argument('--image-size', type=int, default=224, help='centre crop')
    p.add_argument('--resize', type=int, default=None,
                   help='shorter side before the crop (default: image_size * 256 / 224)')
    p.add_argument('--features', choices=['C', '2C'], default='C')
    p.add_argument('--branch', choices=['student', 'teacher'], default='student')
    p.add_argument('--k', type=int, default=20)
    p.add_argument('--temperature', type=float, default=0.07)
    p.add_argument('--sweep', action='store_true',
                   help='also score a k x T grid (best selected on val: optimistic)')
    # the released CoTAP code's grid
    p.add_argument('--sweep-k', type=int, nargs='+', default=[5, 10, 20, 50, 100])
    p.add_argument('--sweep-t', type=float, nargs='+', default=[0.05, 0.07, 0.1, 0.15, 0.2])
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--device', default='cpu')
    p.add_argument('--out-json', default=None)
    p.add_argument('--trust-checkpoint', action='store_true')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args(argv)


def list_image_folder(root: str, classes: Optional[List[str]] = None,
                      max_per_class: Optional[int] = None
                      ) -> Tuple[List[str], List[int], List[str]]:
    """Paths and class indices of ``root/<class>/<image>`` (sorted); classes from ``root`` unless
    given (then every sub-folder must be one of them)."""
    if not osp.isdir(root):
        raise FileNotFoundError(f'image folder not found: {root}')
    found = sorted(d for d in os.listdir(root) if osp.isdir(osp.join(root, d)))
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f'{root}: class folders {unknown[:5]} are not among the '
                         f'{len(classes)} training classes')
    paths, labels = [], []
    for c in found:
        files = sorted(f for f in os.listdir(osp.join(root, c))
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        files = files[:max_per_class] if max_per_class else files
        paths += [osp.join(root, c, f) for f in files]
        labels += [classes.index(c)] * len(files)
    if not paths:
        raise ValueError(f'no image ({"/".join(IMAGE_EXTENSIONS)}) under {root}/<class>/')
    return paths, labels, classes


def load_image(path: str, resize: int, crop: int) -> np.ndarray:
    """Shorter side -> ``resize`` (bicubic), centre crop ``crop``; RGB uint8 ``[crop, crop, 3]``."""
    img = Image.open(path).convert('RGB')
    w, h = img.size
    s = resize / min(w, h)
    img = img.resize((max(crop, round(w * s)), max(crop, round(h * s))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - crop) // 2, (h - crop) // 2
    return np.asarray(img.crop((left, top, left + crop, top + crop)))


def batches(paths: List[str], batch_size: int, resize: int,
            crop: int) -> Iterator[torch.Tensor]:
    for s in range(0, len(paths), batch_size):
        arr = np.stack([load_image(p, resize, crop) for p in paths[s:s + batch_size]])
        yield torch.from_numpy(arr).permute(0, 3, 1, 2).float()


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    logger = MMLogger.get_instance(f'knn_imagenet_{time.time_ns()}', logger_name='knn_imagenet')
    ckpt = None if args.checkpoint.lower() == 'none' else args.checkpoint
    if ckpt is not None and args.trust_checkpoint:
        from cotap_mm.utils.checkpoint import trust_checkpoint
        trust_checkpoint(ckpt)
    model = load_frozen_model(args.config, ckpt, args.branch, args.cfg_options, args.device)
    extract = build_cls_feature_extractor(model, args.features)
    resize = args.resize or round(args.image_size * 256 / 224)
    tr_p, tr_y, classes = list_image_folder(osp.join(args.data_root, 'train'),
                                            max_per_class=args.max_per_class)
    va_p, va_y, _ = list_image_folder(osp.join(args.data_root, 'val'), classes)
    logger.info(f'{len(tr_p)} train / {len(va_p)} val images, {len(classes)} classes')
    feats = {}
    for split, paths in (('train', tr_p), ('val', va_p)):
        feats[split] = torch.cat([extract(b) for b in batches(paths, args.batch_size, resize,
                                                              args.image_size)])
    tr_y_t, va_y_t = torch.tensor(tr_y), torch.tensor(va_y)
    res = knn_accuracy(feats['train'], tr_y_t, feats['val'], va_y_t, len(classes), args.k,
                       args.temperature)
    logger.info(f'k-NN (k={args.k}, T={args.temperature}, {args.features} CLS, '
                f'{feats["val"].shape[1]}-d): top-1 {100 * res["top1"]:.2f}, top-5 '
                f'{100 * res["top5"]:.2f}')
    out = dict(config=args.config, checkpoint=args.checkpoint, features=args.features,
               dim=int(feats['val'].shape[1]), num_classes=len(classes), num_train=len(tr_p),
               num_val=len(va_p), knn=res)
    if args.sweep:
        out['sweep'] = knn_sweep(feats['train'], tr_y_t, feats['val'], va_y_t, len(classes),
                                 args.sweep_k, args.sweep_t)
        b = out['sweep']['best']
        logger.info(f'sweep best k={b["k"]}, T={b["temperature"]}: top-1 {100 * b["top1"]:.2f} '
                    f'-- selected on the {out["sweep"]["selected_on"]}')
    if args.out_json:
        os.makedirs(osp.dirname(osp.abspath(args.out_json)), exist_ok=True)
        with open(args.out_json, 'w') as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == '__main__':
    main()

"""Score a checkpoint with every dense protocol on a segmentation set in its real on-disk layout.

Protocols (each on frozen features, see ``cotap_mm/evaluation``):

* **linear**: 1x1-conv linear probe on the training split, mIoU on val (``linear_probe.py``);
* **overclustering**: k-means on the val patch features, K = number of classes with Hungarian
  matching and K in ``--clusters`` with majority matching, mIoU (``overclustering.py``; Leopart
  arXiv 2204.13101, NeCo arXiv 2408.11054);
* **nn**: dense nearest-neighbour retrieval, memory = training patches, queries = val patches, mIoU
  (``nn_retrieval.py``; Hummingbird arXiv 2306.01667).

Each protocol runs on the plain last-layer tokens (``C``) and, for a model with CoTAP's
object-aware filter, on the filtered 2C features too (``frozen_model.py``). Writes a JSON with
every number and a Markdown table (one row per feature set).

Examples::

    python tools/analysis_tools/score_checkpoint.py \
        configs/cotap/cotap_vit-small-p16_4xb28-240k_coco.py work_dirs/cotap/iter_240000.pth \
        --dataset voc --data-root data/VOCdevkit/VOC2012 --image-size 448 --device cuda \
        --out-json scores/voc.json --out-md scores/voc.md
    # the generated scenes, in memory (no data root) or a make_synthetic_scenes.py folder
    python tools/analysis_tools/score_checkpoint.py CONFIG CKPT --dataset synthetic --clusters 20
"""
import argparse
import json
import os
import os.path as osp
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from mmengine.config import DictAction
from mmengine.logging import MMLogger

from cotap_mm.apis import (PROTOCOLS, DenseProtocolSettings, checkpoint_scores_table,
                           score_cached_features)
from cotap_mm.evaluation.dense_eval import synthetic_probe_data
from cotap_mm.evaluation.frozen_model import dense_feature_extractors, load_frozen_model
from cotap_mm.evaluation.labelled_sets import SEG_DATASET_NAMES, load_seg_arrays, seg_dataset_cfg
from cotap_mm.evaluation.linear_probe import extract_features


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='Score a checkpoint with the dense protocols')
    p.add_argument('config', help='mmpretrain config of the model')
    p.add_argument('checkpoint', help="checkpoint file, or 'none' for random initialisation")
    p.add_argument('--dataset', required=True, choices=SEG_DATASET_NAMES)
    p.add_argument('--data-root', default=None,
                   help='root of the layout (VOCdevkit/VOC2012, coco_stuff164k, '
                   'ADEChallengeData2016, a make_synthetic_scenes.py folder); synthetic without '
                   'it: scenes generated in memory')
    p.add_argument('--train-ann-file', default=None,
                   help="replace the train image list ('' = every image of the folder)")
    p.add_argument('--val-ann-file', default=None, help='replace the val image list')
    p.add_argument('--max-train', type=int, default=None, help='first N training images')
    p.add_argument('--max-val', type=int, default=None, help='first N validation images')
    p.add_argument('--num-train', type=int, default=200, help='generated scenes: training images')
    p.add_argument('--num-val', type=int, default=100, help='generated scenes: val images')
    p.add_argument('--num-objects', type=int, default=8,
                   help='generated scenes: object classes (+ background)')
    p.add_argument('--image-size', type=int, default=448,
                   help='side of the squashed images and labels (the scoring resolution)')
    p.add_argument('--features', nargs='+', default=['auto'],
                   help="feature sets: 'auto' (C, + 2C with the object-aware filter) or C / 2C")
    p.add_argument('--branch', choices=['student', 'teacher'], default='student')
    p.add_argument('--protocols', nargs='+', choices=PROTOCOLS, default=list(PROTOCOLS))
    p.add_argument('--seed', type=int, default=0,
                   help='seed of the probe, the k-means and the memory sampling')
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--linear-epochs', type=int, default=10)
    p.add_argument('--linear-lr', type=float, default=3e-3)
    p.add_argument('--clusters', type=int, nargs='*', default=[100, 300, 500],
                   help='K of the majority-matched overclustering')
    p.add_argument('--no-hungarian', action='store_true',
                   help='skip the K = number of classes, Hungarian-matched clustering')
    p.add_argument('--kmeans-iters', type=int, default=100)
    p.add_argument('--kmeans-restarts', type=int, default=1)
    p.add_argument('--nn-k', type=int, default=30)
    p.add_argument('--nn-temperature', type=float, default=0.02)
    p.add_argument('--memory-size', type=int, default=None,
                   help='memory bank cap (default: every labelled training patch)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--name', default=None, help='row label (default: the config name)')
    p.add_argument('--out-json', default=None)
    p.add_argument('--out-md', default=None, help='Markdown table (written anew)')
    p.add_argument('--trust-checkpoint', action='store_true',
                   help='allow full unpickling of CHECKPOINT; only for files you trust')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args(argv)


def load_data(args: argparse.Namespace) -> Tuple[Tuple[np.ndarray, np.ndarray],
                                                 Tuple[np.ndarray, np.ndarray], int]:
    """(train images, masks), (val images, masks) and the number of classes."""
    if args.dataset == 'synthetic' and args.data_root is None:
        size, k = args.image_size, args.num_objects
        tr_i, tr_m, _ = synthetic_probe_data('train', args.num_train, args.seed, size, k)
        va_i, va_m, _ = synthetic_probe_data('val', args.num_val, args.seed, size, k)
        return (tr_i, tr_m), (va_i, va_m), k + 1
    if args.data_root is None:
        raise ValueError(f'--data-root is required for --dataset {args.dataset}')
    out = []
    for split, ann, cap in (('train', args.train_ann_file, args.max_train),
                            ('val', args.val_ann_file, args.max_val)):
        cfg = seg_dataset_cfg(args.dataset, args.data_root, split, ann)
        imgs, masks, classes = load_seg_arrays(cfg, args.image_size, cap)
        out.append((imgs, masks))
    return out[0], out[1], len(classes)


def protocol_settings(args: argparse.Namespace) -> DenseProtocolSettings:
    """The protocols and their settings asked on the command line."""
    return DenseProtocolSettings(
        protocols=tuple(args.protocols), seed=args.seed, batch_size=args.batch_size,
        linear_epochs=args.linear_epochs, linear_lr=args.linear_lr, clusters=tuple(args.clusters),
        hungarian=not args.no_hungarian, kmeans_iters=args.kmeans_iters,
        kmeans_restarts=args.kmeans_restarts, nn_k=args.nn_k, nn_temperature=args.nn_temperature,
        memory_size=args.memory_size)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    logger = MMLogger.get_instance(f'score_checkpoint_{time.time_ns()}',
                                   logger_name='score_checkpoint')
    ckpt = None if args.checkpoint.lower() == 'none' else args.checkpoint
    if ckpt is not None and args.trust_checkpoint:
        from cotap_mm.utils.checkpoint import trust_checkpoint
        trust_checkpoint(ckpt)
    torch.manual_seed(args.seed)
    model = load_frozen_model(args.config, ckpt, args.branch, args.cfg_options, args.device)
    extractors = dense_feature_extractors(model, args.features)
    (tr_i, tr_m), (va_i, va_m), num_classes = load_data(args)
    logger.info(f'{args.dataset}: {len(tr_i)} train / {len(va_i)} val images at '
                f'{args.image_size}px, {num_classes} classes; feature sets {list(extractors)}')
    settings = protocol_settings(args)
    results: Dict[str, Dict[str, Any]] = {}
    for fname, extract in extractors.items():
        t0 = time.time()
        tr_f, tr_mt = extract_features(extract, (tr_i, tr_m), args.batch_size, args.device,
                                       'train')
        va_f, va_mt = extract_features(extract, (va_i, va_m), args.batch_size, args.device, 'val')
        res = score_cached_features(tr_f, tr_mt, va_f, va_mt, num_classes, settings)
        res.update(dim=int(va_f.shape[1]), grid=[int(va_f.shape[2]), int(va_f.shape[3])])
        results[fname] = res
        logger.info(f'{fname} ({res["dim"]}-d) scored in {time.time() - t0:.1f}s')
    name = args.name or osp.splitext(osp.basename(args.config))[0]
    table = checkpoint_scores_table(name, args.dataset, results)
    logger.info('\n' + table)
    out = dict(config=args.config, checkpoint=args.checkpoint, branch=args.branch,
               dataset=args.dataset, data_root=args.data_root, num_classes=num_classes,
               image_size=args.image_size, num_train=int(len(tr_i)), num_val=int(len(va_i)),
               seed=args.seed, features=results, markdown=table)
    for path, text in ((args.out_json, None), (args.out_md, table)):
        if path:
            os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
            with open(path, 'w') as f:
                if text is None:
                    json.dump(out, f, indent=2)
                else:
                    f.write(text)
    return out


if __name__ == '__main__':
    main()

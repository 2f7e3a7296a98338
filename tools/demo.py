"""The CPU demo (``make demo``): does CoTAP concentrate the dense features of an image-level model?

What it does, as the paper does it but at CPU size (CoTAP post-pretrains an image-level
SSL checkpoint):

1. image-level pretraining: DINO (multi-crop self-distillation) on a tiny ViT, on generated scenes
   (or ``--data-root``);
2. CoTAP from that checkpoint, for ``--cotap-iters`` iterations;
3. the fair control: the same image-level checkpoint trained for the same extra iterations with its
   own objective (DINO);
4. three dense protocols on generated scenes with ground-truth masks -- the frozen linear
   segmentation probe, overclustering (k-means, majority matching) and dense nearest-neighbour
   retrieval, all mIoU -- and the over-dispersion metric, for random init / image-level /
   image-level + control / + CoTAP, each on its plain last-layer tokens (C), CoTAP also on its 2C
   features, and the equal-width control: the control's backbone with CoTAP's object-aware filter,
   prototypes k-means-initialised on its own tokens, never trained (2C); PCA and similarity
   pictures of each row's patch features.

Every stage runs through MMEngine's runner and logs there; the work dir keeps the checkpoints, so
an interrupted demo resumes where it stopped. The result table is printed and written to
``WORK_DIR/results.md`` and ``results.json``.
"""
import argparse
import json
import os
import os.path as osp
import sys
import time
from typing import Any, Dict, List, Optional

from mmengine.logging import MMLogger

from cotap_mm.apis import (CLAIM_NOTE, SCENE_CLASSES, DenseProtocolSettings, aggregate_rows,
                           comparison_pairs, paired_differences, protocol_arg_error, rows_table,
                           score_checkpoint_rows, score_equal_width_control, train_stage)
from cotap_mm.evaluation import synthetic_probe_data
from cotap_mm.evaluation.visualization import save_feature_figure

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
IMAGE_LEVEL_CFG = osp.join(REPO, 'configs/dino/dino_vit-tiny-p8_1xb8-1500it_synthetic.py')
IMAGE_LEVEL_NAME = 'DINO'
COTAP_CFG = osp.join(REPO, 'configs/cotap/cotap_vit-tiny-p8_1xb8-demo_synthetic.py')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--work-dir', default='work_dirs/demo')
    p.add_argument('--image-iters', type=int, default=1500, help='DINO iterations (stage 1)')
    p.add_argument('--cotap-iters', type=int, default=1000, help='CoTAP and control iterations')
    p.add_argument('--data-root', default=None,
                   help='pretrain on this folder of images (any layout mmpretrain CustomDataset '
                   'reads) instead of generated scenes; the probe stays on generated scenes')
    p.add_argument('--probe-train', type=int, default=300,
                   help='probe training images (the NN-retrieval memory, the control\'s '
                   'prototype bank)')
    p.add_argument('--probe-val', type=int, default=150, help='probe validation images')
    p.add_argument('--probe-epochs', type=int, default=60)
    p.add_argument('--probe-lr', type=float, default=1e-2)
    p.add_argument('--oc-clusters', type=int, default=50,
                   help='K of the overclustering (k-means, majority matching)')
    p.add_argument('--nn-k', type=int, default=30, help='neighbours of the NN retrieval')
    p.add_argument('--nn-temperature', type=float, default=0.02)
    p.add_argument('--image-size', type=int, default=96, help='probe image size (pixels)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--skip-control', action='store_true',
                   help='skip the DINO control run (and its equal-width control)')
    args = p.parse_args(argv)
    error = protocol_arg_error(args.oc_clusters, args.probe_train, args.nn_k, args.nn_temperature,
                               None if args.skip_control else COTAP_CFG)
    if error:
        p.error(error)  # refused now rather than after the training stages
    return args


def protocol_settings(args: argparse.Namespace) -> DenseProtocolSettings:
    """The demo's protocols: linear probe (Adam, no flip), overclustering (majority at one K, the
    table's; Hungarian at K = classes, in results.json), NN retrieval."""
    return DenseProtocolSettings(seed=args.seed, linear_epochs=args.probe_epochs,
                                 linear_lr=args.probe_lr, clusters=(args.oc_clusters, ),
                                 hungarian=True, nn_k=args.nn_k,
                                 nn_temperature=args.nn_temperature)


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    args = parse_args(argv)
    work = osp.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    logger = MMLogger.get_instance('cotap_demo', log_file=osp.join(work, 'demo.log'))
    t0 = time.time()

    logger.info(f'[1/4] image-level pretraining ({IMAGE_LEVEL_NAME}, tiny ViT)')
    image_ckpt = train_stage(IMAGE_LEVEL_CFG, osp.join(work, 'image_level'), args.image_iters,
                             args.seed, args.data_root)
    logger.info('[2/4] CoTAP post-pretraining from the image-level checkpoint')
    cotap_ckpt = train_stage(COTAP_CFG, osp.join(work, 'cotap'), args.cotap_iters, args.seed,
                             args.data_root, init_from=image_ckpt)
    control_ckpt = None
    if not args.skip_control:
        logger.info('[3/4] control: the image-level objective for the same extra iterations')
        control_ckpt = train_stage(IMAGE_LEVEL_CFG, osp.join(work, 'control'), args.cotap_iters,
                                   args.seed + 1, args.data_root,
                                   extra=dict(load_from=image_ckpt))
    t_train = time.time() - t0

    logger.info('[4/4] linear probe, overclustering, NN retrieval and over-dispersion on generated '
                'scenes with masks: C (plain tokens), 2C (CoTAP, equal-width control)')
    k = SCENE_CLASSES - 1
    train = synthetic_probe_data('train', args.probe_train, args.seed + 100, args.image_size, k)
    val = synthetic_probe_data('val', args.probe_val, args.seed + 100, args.image_size, k)
    settings = protocol_settings(args)
    names = dict(start=f'image-level ({IMAGE_LEVEL_NAME}, {args.image_iters} it)',
                 control=f'image-level + {args.cotap_iters} it {IMAGE_LEVEL_NAME} (control)',
                 equal_width='control + untrained filter (equal-width control)',
                 cotap=f'image-level + {args.cotap_iters} it CoTAP')
    scored = score_checkpoint_rows('random init', IMAGE_LEVEL_CFG, None, train, val, settings)
    scored += score_checkpoint_rows(names['start'], IMAGE_LEVEL_CFG, image_ckpt, train, val,
                                    settings)
    if control_ckpt is not None:
        scored += score_checkpoint_rows(names['control'], IMAGE_LEVEL_CFG, control_ckpt, train,
                                        val, settings)
        scored.append(score_equal_width_control(names['equal_width'], COTAP_CFG, control_ckpt,
                                                train, val, settings))
    scored += score_checkpoint_rows(names['cotap'], COTAP_CFG, cotap_ckpt, train, val, settings)
    fig_dir = osp.join(work, 'figures')
    rows = []
    for row, feats in scored:
        slug = row['name'].split(' (')[0].replace(' ', '_').replace('+', 'plus')
        slug += '_2C' if row['features'] == '2C' else ''
        for i in range(min(3, len(feats))):
            save_feature_figure(osp.join(fig_dir, f'{slug}_{i}.png'), val[0][i], feats[i].cpu())
        logger.info(f"{row['name']} [{row['features']}]: linear {100 * row['mIoU']:.2f}, "
                    f"overclustering {100 * row['oc_mIoU']:.2f}, NN {100 * row['nn_mIoU']:.2f}, "
                    f"dispersion {row['dispersion']['dispersion']:.3f}")
        rows.append(row)
    summary = format_summary(rows, names, args, fig_dir, t_train, time.time() - t0)
    logger.info('\n' + summary)
    with open(osp.join(work, 'results.md'), 'w') as f:
        f.write(f'Command: python tools/demo.py {" ".join(argv if argv is not None else sys.argv[1:])}'
                f'\n\n{summary}')
    with open(osp.join(work, 'results.json'), 'w') as f:
        json.dump(rows, f, indent=2, default=float)
    return rows


def format_summary(rows: List[Dict[str, Any]], names: Dict[str, str], args: argparse.Namespace,
                   fig_dir: str, t_train: float, t_total: float) -> str:
    """The result table, the equal-width comparisons, what carries the claim, timings."""
    agg = aggregate_rows([rows])
    pairs = comparison_pairs(names['start'], names['control'], names['equal_width'],
                             names['cotap'])
    pixel_acc = ', '.join(f"{100 * r['pixel_acc']:.1f}" for r in rows)
    return (f'{rows_table(agg)}\n\n{paired_differences(agg, pairs)}\n\n{CLAIM_NOTE}\n\n'
            f'Linear probe: {args.probe_epochs} epochs, Adam lr {args.probe_lr}, no flip; '
            f'overclustering: k-means K={args.oc_clusters} on the val patches, majority matching; '
            f'NN retrieval: memory = every training patch, k={args.nn_k}, '
            f'T={args.nn_temperature}; {args.probe_train} / {args.probe_val} scenes at '
            f'{args.image_size} px, seed {args.seed}. Pixel accuracy of the linear probe, row by '
            f'row: {pixel_acc} %.\n\nTraining {t_train / 60:.1f} min, total {t_total / 60:.1f} '
            f'min. Figures (image | PCA of patch features | similarity to the marked patch): '
            f'{fig_dir}\n')


if __name__ == '__main__':
    main()

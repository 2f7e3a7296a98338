"""The CPU demo (``make demo``): does CoTAP concentrate the dense features of an image-level model?

What it does, as the paper does it but at CPU size (CoTAP post-pretrains an image-level
SSL checkpoint):

1. image-level pretraining: DINO (multi-crop self-distillation) on a tiny ViT, on generated scenes
   (or ``--data-root``);
2. CoTAP from that checkpoint, for ``--cotap-iters`` iterations;
3. the fair control: the same image-level checkpoint trained for the same extra iterations with its
   own objective (DINO);
4. a frozen linear segmentation probe (mIoU) and the over-dispersion metric on generated scenes
   with ground-truth masks, for random init / image-level / image-level + control / + CoTAP;
   PCA and similarity pictures of each model's patch features.

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
from typing import Any, Callable, Dict, List, Optional, Sequence

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.logging import MMLogger, print_log  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import Runner, load_checkpoint  # noqa: E402

import cotap_mm  # noqa: E402,F401
from cotap_mm.evaluation import dense_evaluation, synthetic_probe_data  # noqa: E402
from cotap_mm.evaluation.linear_probe import build_model_feature_extractor  # noqa: E402
from cotap_mm.evaluation.visualization import save_feature_figure  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
IMAGE_LEVEL_CFG = osp.join(REPO, 'configs/dino/dino_vit-tiny-p8_1xb8-1500it_synthetic.py')
IMAGE_LEVEL_NAME = 'DINO'
COTAP_CFG = osp.join(REPO, 'configs/cotap/cotap_vit-tiny-p8_1xb8-demo_synthetic.py')
PROBE_CLASSES = 9  # generated scenes' 8 object classes + background


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--work-dir', default='work_dirs/demo')
    p.add_argument('--image-iters', type=int, default=1500, help='DINO iterations (stage 1)')
    p.add_argument('--cotap-iters', type=int, default=1000, help='CoTAP and control iterations')
    p.add_argument('--data-root', default=None,
                   help='pretrain on this folder of images (any layout mmpretrain CustomDataset '
                   'reads) instead of generated scenes; the probe stays on generated scenes')
    p.add_argument('--probe-train', type=int, default=300, help='probe training images')
    p.add_argument('--probe-val', type=int, default=150, help='probe validation images')
    p.add_argument('--probe-epochs', type=int, default=60)
    p.add_argument('--probe-lr', type=float, default=1e-2)
    p.add_argument('--image-size', type=int, default=96, help='probe image size (pixels)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--skip-control', action='store_true', help='skip the DINO control run')
    return p.parse_args(argv)


def _checkpoint(work_dir: str, iters: int) -> str:
    return osp.join(work_dir, f'iter_{iters}.pth')


def train_stage(cfg_path: str, work_dir: str, iters: int, seed: int,
                data_root: Optional[str] = None, init_from: Optional[str] = None,
                extra: Optional[Dict[str, Any]] = None) -> str:
    """Train ``cfg_path`` for ``iters`` iterations in ``work_dir``; resumes an interrupted run."""
    ckpt = _checkpoint(work_dir, iters)
    if osp.isfile(ckpt):
        print_log(f'{ckpt} exists: stage already done', logger='current')
        return ckpt
    cfg = Config.fromfile(cfg_path)
    cfg.work_dir = work_dir
    scale = iters / cfg.train_cfg.max_iters
    cfg.train_cfg.max_iters = iters
    cfg.randomness = dict(seed=seed, deterministic=False)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=max(iters // 3, 1),
                                        by_epoch=False, max_keep_ckpts=1)
    for sched in cfg.param_scheduler:  # rescale the schedules to the requested length
        sched['begin'] = int(round(sched.get('begin', 0) * scale))
        sched['end'] = max(sched['begin'] + 1, int(round(sched.get('end', iters / scale) * scale)))
        if 'T_max' in sched:
            sched['T_max'] = sched['end'] - sched['begin']
    if data_root is not None:
        ds = cfg.train_dataloader.dataset
        pipeline = [dict(type='LoadImageFromFile')] + list(ds.pipeline)
        cfg.train_dataloader.dataset = dict(type='UnlabeledImageDataset', data_root=data_root,
                                            pipeline=pipeline)
    if init_from is not None:
        cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=init_from,
                                           prefix='backbone.')
    if extra:
        cfg.merge_from_dict(extra)
    # an interrupted stage resumes from the latest checkpoint in its work dir
    cfg.resume = osp.isfile(osp.join(work_dir, 'last_checkpoint'))
    runner = Runner.from_cfg(cfg)
    runner.train()
    return ckpt


def build_extractor(cfg_path: str, ckpt: Optional[str],
                    overrides: Optional[Dict[str, Any]] = None) -> Callable:
    """Frozen patch-feature extractor of a model built from ``cfg_path`` (random if no ckpt).

    ``overrides``: ``--cfg-options``-style keys merged into the config first.
    """
    cfg = Config.fromfile(cfg_path)
    if overrides:
        cfg.merge_from_dict(overrides)
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    model = MODELS.build(cfg.model)
    if ckpt is not None:
        load_checkpoint(model, ckpt, map_location='cpu')
    for prm in model.parameters():
        prm.requires_grad_(False)
    return build_model_feature_extractor(model)


def probe_checkpoint(cfg_path: str, ckpt: Optional[str], train: Sequence[np.ndarray],
                     val: Sequence[np.ndarray], epochs: int, lr: float, seed: int,
                     overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The demo's probe of one model: frozen linear probe mIoU and over-dispersion.

    ``train`` / ``val``: :func:`synthetic_probe_data` triples (images, masks, instances) of the
    generated scenes (8 object classes + background); the model is ``cfg_path`` with ``ckpt``
    (random init if None) and ``overrides``; ``seed`` seeds the model's init and the probe.
    Returns :func:`dense_evaluation`'s dict (``val_feats`` included).
    """
    torch.manual_seed(seed)
    return dense_evaluation(build_extractor(cfg_path, ckpt, overrides), train[:2], val[:2],
                            PROBE_CLASSES, val_instances=val[2], epochs=epochs, lr=lr, seed=seed)


def format_table(rows: List[Dict[str, Any]]) -> str:
    head = ('| model | linear-probe mIoU (%) | pixel acc (%) | dispersion (lower = tighter) | '
            'intra cos | inter cos | instance dispersion | feature dim |')
    lines = [head, '|' + '---|' * 8]
    for r in rows:
        d = r['dispersion']
        lines.append(f"| {r['name']} | {100 * r['mIoU']:.2f} | {100 * r['pixel_acc']:.2f} | "
                     f"{d['dispersion']:.3f} | {d['intra']:.3f} | {d['inter']:.3f} | "
                     f"{d.get('instance_dispersion', float('nan')):.3f} | "
                     f"{r['feature_shape'][0]} |")
    return '\n'.join(lines)


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

    logger.info('[4/4] frozen linear probe + over-dispersion on generated scenes with masks')
    k = PROBE_CLASSES - 1
    train = synthetic_probe_data('train', args.probe_train, args.seed + 100, args.image_size, k)
    val = synthetic_probe_data('val', args.probe_val, args.seed + 100, args.image_size, k)
    models = [('random init', IMAGE_LEVEL_CFG, None),
              (f'image-level ({IMAGE_LEVEL_NAME}, {args.image_iters} it)', IMAGE_LEVEL_CFG,
               image_ckpt)]
    if control_ckpt is not None:
        models.append((f'image-level + {args.cotap_iters} it {IMAGE_LEVEL_NAME} (control)',
                       IMAGE_LEVEL_CFG,
                       control_ckpt))
    models.append((f'image-level + {args.cotap_iters} it CoTAP', COTAP_CFG, cotap_ckpt))
    rows = []
    fig_dir = osp.join(work, 'figures')
    for name, cfg_path, ckpt in models:
        res = probe_checkpoint(cfg_path, ckpt, train, val, args.probe_epochs, args.probe_lr,
                               args.seed)
        feats = res.pop('val_feats')
        slug = name.split(' (')[0].replace(' ', '_').replace('+', 'plus')
        for i in range(3):
            save_feature_figure(osp.join(fig_dir, f'{slug}_{i}.png'), val[0][i], feats[i].cpu())
        rows.append(dict(name=name, **{key: res[key] for key in
                                       ('mIoU', 'pixel_acc', 'dispersion', 'feature_shape')}))
        logger.info(f'{name}: mIoU {100 * res["mIoU"]:.2f}, dispersion '
                    f'{res["dispersion"]["dispersion"]:.3f}')
    table = format_table(rows)
    summary = (f'{table}\n\nTraining {t_train / 60:.1f} min, total {(time.time() - t0) / 60:.1f} '
               f'min. Figures (image | PCA of patch features | similarity to the marked patch): '
               f'{fig_dir}\n')
    logger.info('\n' + summary)
    with open(osp.join(work, 'results.md'), 'w') as f:
        f.write(f'Command: python tools/demo.py {" ".join(argv if argv is not None else sys.argv[1:])}'
                f'\n\n{summary}')
    with open(osp.join(work, 'results.json'), 'w') as f:
        json.dump(rows, f, indent=2, default=float)
    return rows


if __name__ == '__main__':
    main()

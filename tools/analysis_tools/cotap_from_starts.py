"""Does CoTAP's result follow its starting checkpoint? CoTAP from starts of different quality.

CoTAP post-pretrains an image-level checkpoint. On generated scenes at CPU size, the
image-level starts we can train reach only about 17-19 linear-probe mIoU, and CoTAP adds 1-2 points
to them (``docs/benchmarks.md``). This tool asks whether that is a property of CoTAP or of its start:
it trains CoTAP for the same iterations, with the same config and seed, from

- the demo's DINO start (``configs/dino/``, ``--dino-iters``; self-supervised, the paper's setting);
- a ViT trained ``--image-iters`` steps with image-level labels (class presence), the image-level
  ceiling at this budget (``probe_references.py``);
- ViTs trained ``--dense-iters`` steps with dense labels: starts whose patch features are better than
  any image-level start here (a stand-in for the paper's fully trained DINO/iBOT teachers);

and scores every start and every CoTAP result with the demo's frozen linear probe on the same
generated scenes. The table is printed and written to ``WORK_DIR/results.md``; the checkpoints stay
in the work dir, so an interrupted run resumes where it stopped.

    python tools/analysis_tools/cotap_from_starts.py --dense-iters 60 150 --image-iters 1500
"""
import argparse
import os
import os.path as osp
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import torch
from mmengine.config import DictAction
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope

from cotap_mm.apis import probe_checkpoint, tiny_vit, train_stage, train_supervised
from cotap_mm.evaluation import synthetic_probe_data

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# the demo's configs (tools/demo.py)
IMAGE_LEVEL_CFG = osp.join(REPO, 'configs/dino/dino_vit-tiny-p8_1xb8-1500it_synthetic.py')
COTAP_CFG = osp.join(REPO, 'configs/cotap/cotap_vit-tiny-p8_1xb8-demo_synthetic.py')

NUM_CLASSES = 8  # object classes of the generated scenes (9 with the background)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--work-dir', default='work_dirs/cotap_from_starts')
    p.add_argument('--dino-iters', type=int, default=1500, help='DINO start (0: none)')
    p.add_argument('--image-iters', type=int, default=1500,
                   help='image-level supervised start (0: none)')
    p.add_argument('--dense-iters', type=int, nargs='*', default=[60, 150],
                   help='one dense-supervised start per value')
    p.add_argument('--cotap-iters', type=int, default=1000)
    p.add_argument('--train-images', type=int, default=2000,
                   help='images of the supervised starts')
    p.add_argument('--probe-train', type=int, default=300)
    p.add_argument('--probe-val', type=int, default=150)
    p.add_argument('--probe-epochs', type=int, default=60)
    p.add_argument('--probe-lr', type=float, default=1e-2)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                   help='overrides of the CoTAP config (e.g. model.topk=8)')
    args = p.parse_args(argv)
    for name in ('dino_iters', 'image_iters', 'cotap_iters', 'train_images', 'probe_train',
                 'probe_val', 'probe_epochs'):
        if getattr(args, name) < 0:
            raise ValueError(f'--{name.replace("_", "-")} must be >= 0, got {getattr(args, name)}')
    if args.cotap_iters == 0:
        raise ValueError('--cotap-iters must be > 0')
    if any(n <= 0 for n in args.dense_iters):
        raise ValueError(f'--dense-iters must be positive, got {args.dense_iters}')
    return args


def supervised_start(path: str, iters: int, image_level: bool, args: argparse.Namespace) -> str:
    """Train the demo's tiny ViT with labels and save it as an mmpretrain checkpoint at ``path``.

    The keys carry the ``backbone.`` prefix, so the checkpoint loads into the DINO config (probe)
    and through ``init_cfg=dict(type='Pretrained', prefix='backbone.')`` into CoTAP. Skipped when
    ``path`` exists.
    """
    if osp.isfile(path):
        return path
    init_default_scope('mmpretrain')
    torch.manual_seed(args.seed)
    vit = tiny_vit(96)
    train_supervised(vit, NUM_CLASSES + 1, iters, 96, args.train_images, args.seed,
                     image_level=image_level)
    os.makedirs(osp.dirname(path), exist_ok=True)
    tmp = path + '.tmp'  # written whole or not at all: an interrupted run retrains this start
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in vit.state_dict().items()}}, tmp)
    os.replace(tmp, path)
    return path


def build_starts(args: argparse.Namespace, work: str) -> List[Tuple[str, str]]:
    """``[(name, checkpoint)]`` of every start the arguments ask for (trained when missing)."""
    starts = []
    if args.dino_iters:
        starts.append((f'DINO ({args.dino_iters} it, self-supervised)',
                       train_stage(IMAGE_LEVEL_CFG, osp.join(work, 'dino'), args.dino_iters,
                                   args.seed)))
    if args.image_iters:
        starts.append((f'image-level labels ({args.image_iters} it)',
                       supervised_start(osp.join(work, f'image_sup_{args.image_iters}.pth'),
                                        args.image_iters, True, args)))
    for n in args.dense_iters:
        starts.append((f'dense labels ({n} it)',
                       supervised_start(osp.join(work, f'dense_sup_{n}.pth'), n, False, args)))
    return starts


def format_table(rows: List[Dict[str, Any]], cotap_iters: int) -> str:
    lines = [f'| start | start mIoU (%) | + {cotap_iters} it CoTAP mIoU (%) | CoTAP gain |',
             '|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['start']} | {100 * r['start_mIoU']:.2f} | {100 * r['cotap_mIoU']:.2f} | "
                     f"{100 * (r['cotap_mIoU'] - r['start_mIoU']):+.2f} |")
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    args = parse_args(argv)
    work = osp.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    logger = MMLogger.get_instance('cotap_from_starts',
                                   log_file=osp.join(work, 'cotap_from_starts.log'))
    t0 = time.time()
    train = synthetic_probe_data('train', args.probe_train, args.seed + 100, 96, NUM_CLASSES)
    val = synthetic_probe_data('val', args.probe_val, args.seed + 100, 96, NUM_CLASSES)

    def probe(cfg: str, ckpt: Optional[str], overrides: Optional[dict] = None) -> float:
        return probe_checkpoint(cfg, ckpt, train, val, args.probe_epochs, args.probe_lr,
                                args.seed, overrides)['mIoU']

    rows = []
    random_miou = probe(IMAGE_LEVEL_CFG, None)
    logger.info(f'random init: mIoU {100 * random_miou:.2f}')
    for i, (name, ckpt) in enumerate(build_starts(args, work)):
        cotap = train_stage(COTAP_CFG, osp.join(work, f'cotap_{i}'), args.cotap_iters, args.seed,
                            init_from=ckpt, extra=dict(args.cfg_options) or None)
        row = dict(start=name, start_mIoU=probe(IMAGE_LEVEL_CFG, ckpt),
                   cotap_mIoU=probe(COTAP_CFG, cotap, dict(args.cfg_options) or None))
        rows.append(row)
        logger.info(f"{name}: start {100 * row['start_mIoU']:.2f}, + CoTAP "
                    f"{100 * row['cotap_mIoU']:.2f}")
    table = format_table(rows, args.cotap_iters)
    cmd = 'python tools/analysis_tools/cotap_from_starts.py ' + ' '.join(
        argv if argv is not None else sys.argv[1:])
    text = (f'Command: `{cmd.strip()}`\n\n{table}\n\nRandom init: {100 * random_miou:.2f}. '
            f'{(time.time() - t0) / 60:.1f} min.\n')
    logger.info('\n' + text)
    with open(osp.join(work, 'results.md'), 'w') as f:
        f.write(text)
    return rows


if __name__ == '__main__':
    main()

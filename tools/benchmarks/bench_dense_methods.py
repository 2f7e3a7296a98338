"""Dense benchmark: CoTAP against the baselines a user would otherwise pick, same data and budget.

For each seed: one image-level starting checkpoint (DINO, tiny ViT, generated scenes: the demo's
``configs/dino/dino_vit-tiny-p8_1xb8-1500it_synthetic.py``), then from that checkpoint, for the
same number of extra iterations and the same data:

- **control**: DINO continued (the fair control for a post-pretraining method);
- **MoCo v3**: mmpretrain's MoCo v3, another image-level objective, from the same backbone;
- **DenseCL**: mmpretrain's dense contrastive method on the ViT's patch-token map;
- **SCFS**: DINO + semantics-consistent feature search after blocks 2-4 (``SCFS``);
- **iBOT + de-coupling**: the iBOT-style baseline with region collaborative cutout and the
  de-coupling branch (``DDSSLiBOT``);
- **CoTAP** (its full objective).

Each is scored beside random init and the starting checkpoint with three dense protocols on
generated scenes with masks -- the frozen linear segmentation probe, overclustering (k-means on the
val patches, majority matching) and dense nearest-neighbour retrieval, all mIoU -- and the
over-dispersion metric, on its plain last-layer tokens (C) and, for CoTAP, on its 2C features
(ordinary || object-aware-filtered tokens) too. The **equal-width control** gives the DINO control
the same filter architecture, prototypes k-means-initialised on its own tokens, never trained, and
is probed on its 2C features: CoTAP is compared C with C and 2C with 2C. Step time (mean of the
runner's ``train/time``) and peak memory of training (each stage in its own subprocess: on CPU the
peak resident memory during ``runner.train()`` above the resident memory just before it, the kernel's
high-water mark being reset through ``/proc/self/clear_refs``; on CUDA ``max_memory_allocated``) are
measured in the same run. Ratios are against the
control. The tables (mean +- std over seeds, and per-seed differences of CoTAP against the
controls) are printed and written with the command that produced them to ``WORK_DIR/section.md``
(``--out`` elsewhere; ``--update-docs``: the "Dense benchmark" section of ``docs/benchmarks.md``,
replacing its hand-written analysis); the per-seed values go to ``WORK_DIR/results.json``. Stages found done in
the work dir are not trained again (their step time and memory come from ``stage_stats.json``), so an
interrupted run, or one with more seeds, resumes.

    python tools/benchmarks/bench_dense_methods.py --seeds 0 1 2 --image-iters 1500 --extra-iters 1000
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import torch

from cotap_mm.apis import (CLAIM_NOTE, DenseProtocolSettings, aggregate_rows, comparison_pairs,
                           paired_differences, protocol_arg_error, rows_table, run_measured_stage,
                           score_checkpoint_rows, score_equal_width_control, write_section)
from cotap_mm.apis.dense_tables import per_seed_table
from cotap_mm.evaluation import synthetic_probe_data

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DOCS = osp.join(REPO, 'docs/benchmarks.md')
IMAGE_LEVEL_CFG = osp.join(REPO, 'configs/dino/dino_vit-tiny-p8_1xb8-1500it_synthetic.py')
COTAP_CFG = osp.join(REPO, 'configs/cotap/cotap_vit-tiny-p8_1xb8-demo_synthetic.py')
MOCO_CFG = osp.join(REPO, 'configs/mocov3/mocov3_vit-tiny-p8_1xb16-300it_synthetic.py')
DENSECL_CFG = osp.join(REPO, 'configs/densecl/densecl_vit-tiny-p8_1xb16-300it_synthetic.py')
SCFS_CFG = osp.join(REPO, 'configs/scfs/scfs_vit-tiny-p8_1xb8-300it_synthetic.py')
DDSSL_CFG = osp.join(REPO, 'configs/ddssl/ddssl-ibot_vit-tiny-p8_1xb8-300it_synthetic.py')
# SCFS's CPU config has 3 blocks; here it gets the 4 blocks of the starting checkpoint, searched
# after blocks 2-4 (the ViT counterpart of ResNet stages 2-4)
SCFS_SAME_BACKBONE = {'model.backbone.arch.num_layers': 4, 'model.backbone.out_indices': (1, 2, 3)}
CONTROL = 'DINO (control)'
EQUAL_WIDTH = 'equal-width control (DINO control + untrained filter)'
METHODS = {  # name: (config, how the starting checkpoint is used, config overrides)
    CONTROL: (IMAGE_LEVEL_CFG, 'load_from', {}),
    'MoCo v3': (MOCO_CFG, 'init_from', {}),
    'DenseCL': (DENSECL_CFG, 'init_from', {}),
    'SCFS': (SCFS_CFG, 'init_from', SCFS_SAME_BACKBONE),
    'iBOT + de-coupling': (DDSSL_CFG, 'init_from', {}),
    'CoTAP': (COTAP_CFG, 'init_from', {}),
}
SECTION = 'section.md'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--work-dir', default='work_dirs/bench_dense')
    p.add_argument('--seeds', type=int, nargs='+', default=[0])
    p.add_argument('--image-iters', type=int, default=1500)
    p.add_argument('--extra-iters', type=int, default=1000)
    p.add_argument('--probe-train', type=int, default=300,
                   help='probe training images (the NN-retrieval memory, the equal-width '
                   "control's prototype bank: at least the filter's 16 prototypes)")
    p.add_argument('--probe-val', type=int, default=150)
    p.add_argument('--probe-epochs', type=int, default=60)
    p.add_argument('--probe-lr', type=float, default=1e-2)
    p.add_argument('--probe-size', type=int, default=96, help='probe image size (pixels)')
    p.add_argument('--oc-clusters', type=int, default=50,
                   help='K of the overclustering (k-means, majority matching)')
    p.add_argument('--nn-k', type=int, default=30, help='neighbours of the NN retrieval')
    p.add_argument('--nn-temperature', type=float, default=0.02)
    p.add_argument('--out', default=None,
                   help=f'also put the Markdown section into this file, replacing its section of '
                   f'the same title (it is always written to WORK_DIR/{SECTION})')
    p.add_argument('--update-docs', action='store_true',
                   help='also replace the "Dense benchmark" section of docs/benchmarks.md (its '
                   'hand-written analysis is lost: re-add it)')
    p.add_argument('--methods', nargs='+', default=None,
                   help='first word of the methods to train (default: all): MoCo DenseCL SCFS '
                   'iBOT CoTAP; the DINO control is always trained (the ratios need it)')
    p.add_argument('--stage', default=None, help=argparse.SUPPRESS)  # internal: one training stage
    args = p.parse_args(argv)
    error = protocol_arg_error(args.oc_clusters, args.probe_train, args.nn_k, args.nn_temperature,
                               COTAP_CFG)
    if error:
        p.error(error)  # refused now rather than after the training stages
    return args


def run_stage_subprocess(cfg: str, work_dir: str, iters: int, seed: int, mode: str,
                         start: Optional[str],
                         overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Train one stage in a fresh process (:func:`run_measured_stage`); returns its checkpoint,
    step time and peak memory."""
    spec = json.dumps(dict(cfg=cfg, work_dir=work_dir, iters=iters, seed=seed, mode=mode,
                           start=start, overrides=overrides or {}))
    out = subprocess.run([sys.executable, osp.abspath(__file__), '--stage', spec],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if out.returncode != 0:
        raise RuntimeError(f'stage {cfg} failed:\n{out.stdout[-4000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def protocol_settings(args: argparse.Namespace, seed: int) -> DenseProtocolSettings:
    """The benchmark's protocols (the demo's): linear probe (Adam, no flip), overclustering
    (majority at ``--oc-clusters``, the table's; Hungarian at K = classes, in results.json), NN
    retrieval."""
    return DenseProtocolSettings(seed=seed, linear_epochs=args.probe_epochs,
                                 linear_lr=args.probe_lr, clusters=(args.oc_clusters, ),
                                 hungarian=True, nn_k=args.nn_k,
                                 nn_temperature=args.nn_temperature)


def run_seed(seed: int, args: argparse.Namespace, data: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Train (or find) every stage of one seed and score it: the rows of that seed."""
    sdir = osp.join(osp.abspath(args.work_dir), f'seed{seed}')
    settings = protocol_settings(args, seed)
    train, val = data['train'], data['val']
    start = run_stage_subprocess(IMAGE_LEVEL_CFG, osp.join(sdir, 'image_level'),
                                 args.image_iters, seed, 'none', None)
    rows = [r for r, _ in score_checkpoint_rows('random init', IMAGE_LEVEL_CFG, None, train, val,
                                                settings)]
    rows += [r for r, _ in score_checkpoint_rows(start_name(args), IMAGE_LEVEL_CFG,
                                                 start['ckpt'], train, val, settings)]
    for name, (cfg, mode, overrides) in METHODS.items():
        if args.methods and name.split()[0] not in args.methods and name != CONTROL:
            continue
        st = run_stage_subprocess(cfg, osp.join(sdir, name.split()[0].lower()),
                                  args.extra_iters, seed, mode, start['ckpt'], overrides)
        method_rows = [r for r, _ in score_checkpoint_rows(
            f'+ {args.extra_iters} it {name}', cfg, st['ckpt'], train, val, settings,
            overrides)]
        method_rows[0].update(step_time=st['step_time'], peak_mb=st['peak_mb'])
        if name == CONTROL:
            method_rows.append(score_equal_width_control(EQUAL_WIDTH, COTAP_CFG, st['ckpt'],
                                                         train, val, settings)[0])
        for r in method_rows:
            print(f"[seed {seed}] {r['name']} [{r['features']}]: linear {100 * r['mIoU']:.2f}, "
                  f"overclustering {100 * r['oc_mIoU']:.2f}, NN {100 * r['nn_mIoU']:.2f}",
                  flush=True)
        rows += method_rows
    return rows


def start_name(args: argparse.Namespace) -> str:
    return f'image-level start (DINO, {args.image_iters} it)'


def report(per_seed: List[List[Dict[str, Any]]], args: argparse.Namespace, cmd: str,
           seconds: float) -> str:
    """The Markdown section: command, the table, the paired differences, the per-seed values."""
    agg = aggregate_rows(per_seed)
    control = f'+ {args.extra_iters} it {CONTROL}'
    cotap = f'+ {args.extra_iters} it CoTAP'
    pairs = comparison_pairs(start_name(args), control, EQUAL_WIDTH, cotap)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f'CPU ({os.cpu_count()} cores)'
    per_seed_tables = '\n\n'.join(f'{title} per seed (%):\n\n{per_seed_table(agg, key, args.seeds)}'
                                   for key, title in (('mIoU', 'Linear probe'),
                                                      ('oc_mIoU', 'Overclustering'),
                                                      ('nn_mIoU', 'NN retrieval')))
    return (f'## Dense benchmark (tiny ViT, generated scenes)\n\nCommand: `{cmd}`  \n'
            f'Device: {device}; seeds {args.seeds}; {seconds:.0f} s in all. Linear probe '
            f'{args.probe_epochs} epochs (Adam lr {args.probe_lr}, no flip); overclustering '
            f'K={args.oc_clusters}, majority matching; NN retrieval k={args.nn_k}, '
            f'T={args.nn_temperature}, memory = every training patch; {args.probe_train} / '
            f'{args.probe_val} scenes at {args.probe_size} px. Mean +- std over seeds.\n\n'
            f'{rows_table(agg, f"{control} [C]")}\n\n{paired_differences(agg, pairs)}\n\n'
            f'{CLAIM_NOTE}\n\n{per_seed_tables}\n')


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.stage is not None:
        print(json.dumps(run_measured_stage(json.loads(args.stage))))
        return {}
    work = osp.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    data = dict(train=synthetic_probe_data('train', args.probe_train, 100, args.probe_size, 8),
                val=synthetic_probe_data('val', args.probe_val, 100, args.probe_size, 8))
    t0 = time.time()
    per_seed = [run_seed(seed, args, data) for seed in args.seeds]
    cmd = 'python tools/benchmarks/bench_dense_methods.py ' + ' '.join(
        sys.argv[1:] if argv is None else argv)
    section = report(per_seed, args, cmd, time.time() - t0)
    print(section)
    if args.out:  # a Markdown file of several sections: this one replaced, the others kept
        write_section(args.out, section)
    with open(osp.join(work, SECTION), 'w') as f:
        f.write(section)
    if args.update_docs:
        write_section(DOCS, section)
    results = aggregate_rows(per_seed)
    with open(osp.join(work, 'results.json'), 'w') as f:  # the per-seed values behind the table
        json.dump(dict(command=cmd, seeds=args.seeds, results=results,
                       rows=[[{k: v for k, v in r.items() if k != 'protocols'} for r in rows]
                             for rows in per_seed]), f, indent=1, default=float)
    return results


if __name__ == '__main__':
    main()

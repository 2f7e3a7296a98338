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

Each is scored with the frozen linear segmentation probe (mIoU) and the over-dispersion metric on
generated scenes with masks, beside random init and the starting checkpoint. Step time (mean of the
runner's ``train/time``) and peak memory of training (each stage in its own subprocess: on CPU the
peak resident memory during ``runner.train()`` above the resident memory just before it, the kernel's
high-water mark being reset through ``/proc/self/clear_refs``; on CUDA ``max_memory_allocated``) are
measured in the same run. Ratios are against the
control. The table (mean +- std over seeds) is printed and written to ``docs/benchmarks.md`` with the
command that produced it; the per-seed values go to ``WORK_DIR/results.json``. Stages found done in
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

TOOLS = osp.dirname(osp.dirname(osp.abspath(__file__)))
REPO = osp.dirname(TOOLS)
sys.path.insert(0, TOOLS)
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from demo import COTAP_CFG, IMAGE_LEVEL_CFG, probe_checkpoint, train_stage  # noqa: E402

MOCO_CFG = osp.join(REPO, 'configs/mocov3/mocov3_vit-tiny-p8_1xb16-300it_synthetic.py')
DENSECL_CFG = osp.join(REPO, 'configs/densecl/densecl_vit-tiny-p8_1xb16-300it_synthetic.py')
SCFS_CFG = osp.join(REPO, 'configs/scfs/scfs_vit-tiny-p8_1xb8-300it_synthetic.py')
DDSSL_CFG = osp.join(REPO, 'configs/ddssl/ddssl-ibot_vit-tiny-p8_1xb8-300it_synthetic.py')
# SCFS's CPU config has 3 blocks; here it gets the 4 blocks of the starting checkpoint, searched
# after blocks 2-4 (the ViT counterpart of ResNet stages 2-4)
SCFS_SAME_BACKBONE = {'model.backbone.arch.num_layers': 4, 'model.backbone.out_indices': (1, 2, 3)}
# step time and peak memory of a trained stage, kept in its work dir: a re-run that finds the stage
# done (train_stage skips it) reports these instead of nothing. A stage resumed after an
# interruption reports what its last process measured.
STAGE_STATS = 'stage_stats.json'
CONTROL = 'DINO (control)'
METHODS = {  # name: (config, how the starting checkpoint is used, config overrides)
    CONTROL: (IMAGE_LEVEL_CFG, 'load_from', {}),
    'MoCo v3': (MOCO_CFG, 'init_from', {}),
    'DenseCL': (DENSECL_CFG, 'init_from', {}),
    'SCFS': (SCFS_CFG, 'init_from', SCFS_SAME_BACKBONE),
    'iBOT + de-coupling': (DDSSL_CFG, 'init_from', {}),
    'CoTAP': (COTAP_CFG, 'init_from', {}),
}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--work-dir', default='work_dirs/bench_dense')
    p.add_argument('--seeds', type=int, nargs='+', default=[0])
    p.add_argument('--image-iters', type=int, default=1500)
    p.add_argument('--extra-iters', type=int, default=1000)
    p.add_argument('--probe-train', type=int, default=300)
    p.add_argument('--probe-val', type=int, default=150)
    p.add_argument('--probe-epochs', type=int, default=60)
    p.add_argument('--probe-lr', type=float, default=1e-2)
    p.add_argument('--probe-size', type=int, default=96, help='probe image size (pixels)')
    p.add_argument('--out', default=osp.join(REPO, 'docs/benchmarks.md'))
    p.add_argument('--methods', nargs='+', default=None,
                   help='first word of the methods to train (default: all): MoCo DenseCL SCFS '
                   'iBOT CoTAP; the DINO control is always trained (the ratios need it)')
    p.add_argument('--stage', default=None, help=argparse.SUPPRESS)  # internal: one training stage
    return p.parse_args(argv)


def run_stage_subprocess(cfg: str, work_dir: str, iters: int, seed: int, mode: str,
                         start: Optional[str],
                         overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Train one stage in a fresh process; returns its checkpoint, step time and peak memory."""
    spec = json.dumps(dict(cfg=cfg, work_dir=work_dir, iters=iters, seed=seed, mode=mode,
                           start=start, overrides=overrides or {}))
    out = subprocess.run([sys.executable, osp.abspath(__file__), '--stage', spec],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if out.returncode != 0:
        raise RuntimeError(f'stage {cfg} failed:\n{out.stdout[-4000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def _stage_main(spec: Dict[str, Any]) -> None:
    from mmengine.runner import Runner
    stats: Dict[str, float] = {}
    orig_train = Runner.train

    def train_and_measure(self):  # record the runner's own step time before it is torn down
        base = _reset_peak_rss()
        result = orig_train(self)
        stats['step_time'] = float(self.message_hub.get_scalar('train/time').mean())
        # the kernel's per-thread RSS counters are summed lazily (up to ~64 pages each), so a run
        # that allocates next to nothing can read a few hundred KB below its baseline: floor at 0
        stats['peak_mb'] = max(0.0, (_status_kb('VmHWM') - base) / 1024)
        return result

    extra = {k: tuple(v) if isinstance(v, list) else v
             for k, v in spec.get('overrides', {}).items()}  # JSON turned tuples into lists
    if spec['mode'] == 'load_from' and spec['start']:
        extra['load_from'] = spec['start']
    init_from = spec['start'] if spec['mode'] == 'init_from' else None
    Runner.train = train_and_measure
    try:
        ckpt = train_stage(spec['cfg'], spec['work_dir'], spec['iters'], spec['seed'],
                           init_from=init_from, extra=extra or None)
    finally:
        Runner.train = orig_train
    stats_file = osp.join(spec['work_dir'], STAGE_STATS)
    if 'step_time' in stats:  # trained here: keep the measurements beside the checkpoint
        if torch.cuda.is_available():
            stats['peak_mb'] = torch.cuda.max_memory_allocated() / 2**20
        with open(stats_file, 'w') as f:
            json.dump(stats, f)
    elif osp.isfile(stats_file):  # stage done by an earlier run: report what it measured
        with open(stats_file) as f:
            stats = json.load(f)
    print(json.dumps(dict(ckpt=ckpt, step_time=stats.get('step_time', float('nan')),
                          peak_mb=stats.get('peak_mb', float('nan')))))


def _status_kb(key: str) -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return float(line.split()[1])
    return float('nan')


def _reset_peak_rss() -> float:
    """Reset the high-water mark of resident memory (Linux) to the current RSS; returns it in KB.

    Read back as ``VmHWM``, the counter the peak is read from later: ``VmRSS`` and ``VmHWM`` are
    summed from per-thread counters at different times and can disagree by a few pages, which
    made a tiny run's peak come out below its baseline (-0.02 MB, -0.11 MB); the caller floors the
    difference at 0.
    """
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass
    return _status_kb('VmHWM')


def evaluate(cfg: str, ckpt: Optional[str], data: Dict[str, Any],
             args: argparse.Namespace, seed: int,
             overrides: Optional[Dict[str, Any]] = None) -> Dict[str, float]:
    res = probe_checkpoint(cfg, ckpt, data['train'], data['val'], args.probe_epochs, args.probe_lr,
                           seed, overrides)
    return dict(mIoU=100 * res['mIoU'], dispersion=res['dispersion']['dispersion'],
                inst_dispersion=res['dispersion'].get('instance_dispersion', float('nan')))


def _fmt(values: List[float], digits: int = 2) -> str:
    if not values or all(np.isnan(values)):
        return '-'
    if len(values) == 1:
        return f'{values[0]:.{digits}f}'
    return f'{np.mean(values):.{digits}f} +- {np.std(values):.{digits}f}'


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.stage is not None:
        _stage_main(json.loads(args.stage))
        return {}
    from cotap_mm.evaluation import synthetic_probe_data
    work = osp.abspath(args.work_dir)
    data = dict(train=synthetic_probe_data('train', args.probe_train, 100, args.probe_size, 8),
                val=synthetic_probe_data('val', args.probe_val, 100, args.probe_size, 8))
    results: Dict[str, Dict[str, List[float]]] = {}

    def add(name: str, values: Dict[str, float]) -> None:
        for k, v in values.items():
            results.setdefault(name, {}).setdefault(k, []).append(v)

    t0 = time.time()
    for seed in args.seeds:
        sdir = osp.join(work, f'seed{seed}')
        start = run_stage_subprocess(IMAGE_LEVEL_CFG, osp.join(sdir, 'image_level'),
                                     args.image_iters, seed, 'none', None)
        add('random init', evaluate(IMAGE_LEVEL_CFG, None, data, args, seed))
        add(f'image-level start (DINO, {args.image_iters} it)',
            dict(evaluate(IMAGE_LEVEL_CFG, start['ckpt'], data, args, seed)))
        for name, (cfg, mode, overrides) in METHODS.items():
            if (args.methods and name.split()[0] not in args.methods
                    and name != CONTROL):
                continue
            st = run_stage_subprocess(cfg, osp.join(sdir, name.split()[0].lower()),
                                      args.extra_iters, seed, mode, start['ckpt'], overrides)
            add(f'+ {args.extra_iters} it {name}',
                dict(evaluate(cfg, st['ckpt'], data, args, seed, overrides),
                     step_time=st['step_time'], peak_mb=st['peak_mb']))
            print(f'[seed {seed}] {name}: {results[f"+ {args.extra_iters} it {name}"]}', flush=True)

    control = results[f'+ {args.extra_iters} it {CONTROL}']
    ref_t, ref_m = np.mean(control['step_time']), np.mean(control['peak_mb'])
    lines = ['| model | linear-probe mIoU (%) | dispersion (lower = tighter) | instance dispersion '
             '| step time (s) | x control | peak memory (MB) | x control |', '|' + '---|' * 8]
    for name, r in results.items():
        t = r.get('step_time', [])
        m = r.get('peak_mb', [])
        lines.append(f"| {name} | {_fmt(r['mIoU'])} | {_fmt(r['dispersion'], 3)} | "
                     f"{_fmt(r['inst_dispersion'], 3)} | {_fmt(t, 3)} | "
                     f"{_fmt([np.mean(t) / ref_t] if t else [], 2)} | {_fmt(m, 0)} | "
                     f"{_fmt([np.mean(m) / ref_m] if m else [], 2)} |")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f'CPU ({os.cpu_count()} cores)'
    cmd = 'python tools/benchmarks/bench_dense_methods.py ' + ' '.join(
        sys.argv[1:] if argv is None else argv)
    report = (f'## Dense benchmark (tiny ViT, generated scenes)\n\nCommand: `{cmd}`  \n'
              f'Device: {device}; seeds {args.seeds}; {time.time() - t0:.0f} s in all.\n\n'
              + '\n'.join(lines) + '\n')
    print(report)
    write_section(args.out, report)
    with open(osp.join(work, 'results.json'), 'w') as f:  # the per-seed values behind the table
        json.dump(dict(command=cmd, seeds=args.seeds, results=results), f, indent=1)
    return results


def write_section(path: str, section: str) -> None:
    """Put ``section`` (a markdown ``## title`` block) into ``path`` in place of the block with the
    same title, or at the end; the file's other sections are kept."""
    title = section.splitlines()[0]
    text = '# Benchmarks\n'
    if osp.isfile(path):
        with open(path) as f:
            text = f.read()
    lines = text.splitlines(keepends=True)
    if title + '\n' in lines:
        start = lines.index(title + '\n')
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith('## ')),
                   len(lines))
        lines[start:end] = [section.rstrip('\n') + '\n\n' if end < len(lines) else section]
        text = ''.join(lines)
    else:
        text = text.rstrip('\n') + '\n\n' + section
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)


if __name__ == '__main__':
    main()

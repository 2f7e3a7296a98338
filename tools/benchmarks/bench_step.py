"""What one training step costs: CoTAP's released runs against MoCo v3 and DINO on the same data.

Rows (``--models``, default all; the MoCo v3 row of every backbone used is always measured, since
the ratios need it):

=====================  ==================================================================
key                    config
=====================  ==================================================================
mocov3-s / mocov3-b    mmpretrain's ``mocov3_vit-{small,base}-p16_16xb256-amp-coslr-300e_in1k``
dino-s / dino-b        our DINO (``configs/_base_/models/dino_vit.py``) on CoTAP's COCO crops
cotap-s-coco           ``configs/cotap/cotap_vit-small-p16_4xb28-240k_coco.py``
cotap-s-coco-in1k      ``configs/cotap/cotap_vit-small-p16-dino_4xb28-240k_coco-in1k.py``
cotap-b-coco           ``configs/cotap/cotap_vit-base-p16_8xb16-210k_coco.py``
cotap-b-coco-in1k      ``configs/cotap/cotap_vit-base-p16-dino_8xb16-210k_coco-in1k.py``
=====================  ==================================================================

Every row gets the same number of images per step (``--images-per-step``; a CoTAP index is 2
images on COCO, anchor + neighbour, and 4 on COCO + ImageNet) and reads generated images in the
real on-disk layout under ``WORK_DIR`` (``data/coco/train2017``, ``data/imagenet/train`` with
mmpretrain's ``meta/train.txt``, the neighbour files the configs name, written with
``cotap_mm.datasets.neighbors.write_neighbors``) and a random start checkpoint written in the
DINO layout (``checkpoints/dino_deitsmall16_pretrain.pth``) and converted with
``tools/model_converters/vit2cotap.py``'s code to the path the CoTAP configs load
(``checkpoints/dino_vits16_cotap.pth``); MoCo v3 and DINO load it too.

The step is the runner's own training iteration (``IterBasedTrainLoop.run_iter``: the hooks,
``model.train_step`` with the config's optim wrapper, i.e. data preprocessing, forward, backward,
optimizer step, EMA teacher update, schedulers), without the data loading, which the ``--data``
mode measures apart. Each model runs in its own process, in the work dir, so that the configs'
relative paths (``data/...``, ``checkpoints/...``) find the generated files. Changes to the
configs, all of them cost-neutral: batch size, workers, an infinite sampler, iteration-based
schedules and no checkpoint saving; MoCo v3's SyncBN -> BN1d (one process) and its ColorJitter ->
``HueSafeColorJitter`` (mmpretrain's fails on hue under NumPy 2; same factors); CoTAP's Sinkhorn
queues at their per-GPU size (``size / GPUs`` of the released run, what each process holds); on
CPU ``OptimWrapper`` (fp32) instead of ``AmpOptimWrapper``. With ``--state late`` (default)
CoTAP's queues are filled, its prototype bank is full and its prototypes are initialised: the
state of every step after the first few thousand (the one-off k-means is left out). ``--state
start`` keeps them as loaded, empty, as in the first steps of a run.

Per row: FLOPs of one step (``torch.utils.flop_counter.FlopCounterMode`` over the last warm-up
step, forward + backward: matmuls, convolutions, attention; element-wise ops and the optimizer are
not counted), the median time of the timed steps (after ``--warmup`` steps; CUDA synchronised
around each), peak memory over the timed steps (CUDA: ``max_memory_allocated``; CPU: peak resident
set size, ``VmHWM``), ratios to the MoCo v3 row of the same backbone measured in the same run, the
FLOP ratio against the time ratio (``time/FLOP`` > 1: slower than its arithmetic predicts),
achieved TFLOP/s and, on CUDA, MFU against the device's peak for the AMP dtype (a table of known
GPUs; ``--peak-tflops`` overrides) and the host synchronisations of one warm-up step
(``torch.cuda.set_sync_debug_mode('warn')``, where they come from listed below the table).

``--data`` measures the training pipeline alone: one process, one thread, the config's dataset,
pipeline and collate function (``Runner.build_dataloader``, no workers), CPU time per image, i.e.
images/s per data-loader worker core, and from it the cores per GPU a step needs to be fed:
``images per step / GPU step time / (images/s/core)``. The GPU step time is ``--gpu-step-time``
or, with ``--device cuda``, the step measured in the same run (both tables are printed then).

Usage::

    # CPU (docs/benchmarks.md): 4 images per step, 1 thread, 2 warm-up + 3 timed steps
    python tools/benchmarks/bench_step.py --threads 1
    # GPU, one command, both tables (defaults: AMP fp16, the released per-GPU images per step:
    # 112 for ViT-S, 64 for ViT-B; 5 warm-up + 10 timed steps)
    python tools/benchmarks/bench_step.py --device cuda --data
    # the pipeline alone, given a step time measured elsewhere
    python tools/benchmarks/bench_step.py --data --gpu-step-time 0.41 --models cotap-s-coco-in1k
"""
import argparse
import json
import math
import os
import os.path as osp
import re
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

try:
    import cotap_mm  # noqa: F401  (registers modules, installs the safe checkpoint loader)
except ModuleNotFoundError as err:  # not the project's environment, e.g. the system python
    sys.exit(f'tools/benchmarks/bench_step.py: {err} in {sys.executable}: use the cotap_mm '
             'environment (`source .venv/bin/activate` after `make setup`, or .venv/bin/python)')
from cotap_mm.engine.memory import reset_peak_rss, status_kb  # noqa: E402

TOOLS = osp.dirname(osp.dirname(osp.abspath(__file__)))
REPO = osp.dirname(TOOLS)  # the checkout whose configs/ the rows run

MOCOV3 = 'mmpretrain::mocov3/mocov3_vit-{}-p16_16xb256-amp-coslr-300e_in1k.py'
COTAP = 'configs/cotap/cotap_vit-{}.py'


def _rows(backbone: str, mocov3: str, coco: str, coco_in1k: str) -> Dict[str, Dict[str, str]]:
    """The four rows of one backbone ('S' / 'B'): key -> display name, kind, backbone and config
    (repository path, or 'mmpretrain::' path; DINO's is written into the work dir)."""
    vit, b = f'ViT-{backbone}/16', backbone.lower()
    rows = {f'mocov3-{b}': dict(name=f'MoCo v3 {vit}', kind='mocov3', config=MOCOV3.format(mocov3)),
            f'dino-{b}': dict(name=f'DINO {vit}', kind='dino', config=''),
            f'cotap-{b}-coco': dict(name=f'CoTAP {vit} COCO', kind='cotap',
                                    config=COTAP.format(coco)),
            f'cotap-{b}-coco-in1k': dict(name=f'CoTAP {vit} COCO+IN1k', kind='cotap',
                                         config=COTAP.format(coco_in1k))}
    return {k: dict(row, backbone=backbone) for k, row in rows.items()}


MODELS: Dict[str, Dict[str, str]] = {
    **_rows('S', 'small', 'small-p16_4xb28-240k_coco', 'small-p16-dino_4xb28-240k_coco-in1k'),
    **_rows('B', 'base', 'base-p16_8xb16-210k_coco', 'base-p16-dino_8xb16-210k_coco-in1k')}
REFERENCE = {'S': 'mocov3-s', 'B': 'mocov3-b'}
# the start checkpoint of each backbone: official DINO file name, and where the CoTAP configs load
# the converted weights from (load_from)
BACKBONES = {
    'S': dict(arch='dino-s', embed_dims=384, dino_file='checkpoints/dino_deitsmall16_pretrain.pth',
              start='checkpoints/dino_vits16_cotap.pth', cuda_images=112),
    'B': dict(arch='dino-b', embed_dims=768, dino_file='checkpoints/dino_vitbase16_pretrain.pth',
              start='checkpoints/dino_vitb16_cotap.pth', cuda_images=64),
}
DINO_CONFIG = """# DINO at CoTAP's backbone and crops, written by tools/benchmarks/bench_step.py:
# configs/_base_/models/dino_vit.py on the COCO multi-crop of CoTAP (2 x 224 + 4 x 96), official
# DINO optimisation (AdamW, weight decay 0.04, clip 3.0, fp16), from the same start checkpoint.
_base_ = [{model!r}, {data!r}, {runtime!r}]
model = dict(backbone=dict(arch={arch!r}), head=dict(in_channels={embed_dims}))
load_from = {start!r}
max_iters = 100
optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-4, betas=(0.9, 0.999), weight_decay=0.04),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=3.0))
param_scheduler = [dict(type='CosineAnnealingLR', T_max=max_iters, eta_min_ratio=0.01,
                        by_epoch=False, begin=0, end=max_iters)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
"""
# MoCoV3ViT adds this arch to the zoo only when an instance is built
MOCOV3_ARCHS = {'mocov3-small': dict(embed_dims=384, num_layers=12, num_heads=12,
                                     feedforward_channels=1536)}
AMP_DTYPES = {'fp16': 'float16', 'bf16': 'bfloat16'}
# dense peak TFLOP/s per dtype (vendor data sheets, no sparsity; fp16/bf16 = tensor cores with
# fp32 accumulation, fp32 = without TF32). Matched in order against torch.cuda.get_device_name().
PEAK_TFLOPS: List[Tuple[str, Dict[str, Optional[float]]]] = [
    (r'\bH200\b', dict(fp16=989.4, bf16=989.4, fp32=66.9)),
    (r'\bH100\b.*\bPCIe\b', dict(fp16=756.0, bf16=756.0, fp32=51.2)),
    (r'\bH100\b.*\bNVL\b', dict(fp16=835.5, bf16=835.5, fp32=60.0)),
    (r'\bH100\b', dict(fp16=989.4, bf16=989.4, fp32=66.9)),  # SXM
    (r'\bA100\b', dict(fp16=312.0, bf16=312.0, fp32=19.5)),
    (r'\bA10\b', dict(fp16=125.0, bf16=125.0, fp32=31.2)),
    (r'\bL40S\b', dict(fp16=362.05, bf16=362.05, fp32=91.6)),
    (r'\bL40\b', dict(fp16=181.05, bf16=181.05, fp32=90.5)),
    (r'\bL4\b', dict(fp16=121.0, bf16=121.0, fp32=30.3)),
    (r'\bV100\b', dict(fp16=125.0, bf16=None, fp32=15.7)),
    (r'\bT4\b', dict(fp16=65.0, bf16=None, fp32=8.1)),
]


# ----------------------------------------------------------------------------- pure functions
def median(values: Sequence[float]) -> float:
    """Median of the timed steps."""
    if not values:
        raise ValueError('median of no values (no step was timed)')
    return float(statistics.median(values))


def ratio(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    """``value / reference``, None when either is missing or the reference is not positive."""
    if value is None or reference is None or not reference > 0 or math.isnan(value):
        return None
    return value / reference


def achieved_tflops(flops: float, seconds: float) -> float:
    """FLOPs per step over seconds per step, in TFLOP/s."""
    if not seconds > 0:
        raise ValueError(f'seconds must be > 0, got {seconds}')
    return flops / seconds / 1e12


def mfu(flops: float, seconds: float, peak_tflops: float) -> float:
    """Model FLOP utilisation: achieved TFLOP/s over the device's peak (0.35 = 35 %)."""
    if not peak_tflops > 0:
        raise ValueError(f'peak_tflops must be > 0, got {peak_tflops}')
    return achieved_tflops(flops, seconds) / peak_tflops


def lookup_peak_tflops(device_name: str, dtype: str,
                       override: Optional[float] = None) -> Optional[float]:
    """Peak TFLOP/s of ``device_name`` for ``dtype`` ('fp16', 'bf16' or 'fp32'); ``override``
    wins; None for an unknown device or a dtype it has no fast path for (V100 / T4 bf16)."""
    if dtype not in ('fp16', 'bf16', 'fp32'):
        raise ValueError(f"dtype must be 'fp16', 'bf16' or 'fp32', got {dtype!r}")
    if override is not None:
        return override
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return peaks[dtype]
    return None


def cores_per_gpu(images_per_step: int, gpu_step_time: float,
                  images_per_s_per_core: float) -> float:
    """Data-loader cores that keep one GPU fed: images the step consumes per second over the
    images one core prepares per second."""
    if not gpu_step_time > 0 or not images_per_s_per_core > 0:
        raise ValueError(f'gpu_step_time and images_per_s_per_core must be > 0, got '
                         f'{gpu_step_time} and {images_per_s_per_core}')
    return images_per_step / gpu_step_time / images_per_s_per_core


def images_per_index(dataset: Mapping[str, Any]) -> int:
    """Images one dataset index gives (a config's ``train_dataloader.dataset``): 1, 2 with a
    neighbour file (anchor + neighbour), summed over MixedCOCOImageNet's two parts."""
    if dataset.get('type') == 'MixedCOCOImageNet':
        return images_per_index(dataset['coco']) + images_per_index(dataset['imagenet'])
    return 2 if dataset.get('neighbors_file') else 1


def neighbour_files(dataset: Mapping[str, Any]) -> List[Tuple[str, str]]:
    """``(source, path)`` of the neighbour files a dataset config reads ('coco' / 'imagenet')."""
    if dataset.get('type') == 'MixedCOCOImageNet':
        return neighbour_files(dataset['coco']) + neighbour_files(dataset['imagenet'])
    if not dataset.get('neighbors_file'):
        return []
    source = 'imagenet' if 'imagenet' in str(dataset.get('type', '')).lower() else 'coco'
    return [(source, dataset['neighbors_file'])]


def released_gpus(config: str) -> int:
    """GPUs of a released run from its config name (``..._4xb28-...`` -> 4)."""
    m = re.search(r'_(\d+)xb\d+', osp.basename(config))
    if not m:
        raise ValueError(f'no "<gpus>xb<batch>" in the config name {config!r}')
    return int(m.group(1))


def batch_size(images_per_step: int, per_index: int, model: str) -> int:
    """Dataset indices per step so that every row gets ``images_per_step`` images."""
    if images_per_step % per_index:
        raise ValueError(f'--images-per-step {images_per_step} is not a multiple of the '
                         f'{per_index} images per index of {model}')
    return images_per_step // per_index


def _fmt(value: Optional[float], spec: str) -> str:
    return '-' if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, spec)


def step_table(results: Sequence[Mapping[str, Any]], peak_tflops: Optional[float]) -> str:
    """Markdown table of step results; ratios against the row whose ``key`` is the ``reference``
    of each result (failed rows: their error)."""
    by_key = {r['key']: r for r in results}
    lines = ['| model | images/step | GFLOP/step | step time (s) | peak memory (GiB) | '
             'FLOPs x MoCo v3 | time x MoCo v3 | time / FLOP ratio | memory x MoCo v3 | '
             'TFLOP/s | MFU | host syncs/step |', '|' + '---|' * 12]
    for r in results:
        if r.get('error'):
            lines.append(f"| {r['name']} | failed: {r['error']} |" + ' |' * 10)
            continue
        ref = by_key.get(r['reference'], {})
        t = median(r['times'])
        fr = ratio(r['flops'], ref.get('flops'))
        tr = ratio(t, median(ref['times']) if ref.get('times') else None)
        mr = ratio(r['peak_bytes'], ref.get('peak_bytes'))
        tf = achieved_tflops(r['flops'], t)
        util = mfu(r['flops'], t, peak_tflops) if peak_tflops else None
        syncs = r.get('syncs')
        lines.append(
            f"| {r['name']} | {r['images_per_step']} | {r['flops'] / 1e9:.0f} | {t:.3f} | "
            f"{r['peak_bytes'] / 2**30:.2f} | {_fmt(fr, '.2f')} | {_fmt(tr, '.2f')} | "
            f"{_fmt(ratio(tr, fr), '.2f')} | {_fmt(mr, '.2f')} | {tf:.3f} | "
            f"{_fmt(None if util is None else 100 * util, '.1f')}{'' if util is None else ' %'} | "
            f"{'-' if syncs is None else syncs} |")
    return '\n'.join(lines)


def step_notes(result: Mapping[str, Any]) -> str:
    """The line under the table for one row: skipped fp16 steps, where the host syncs come
    from (most frequent first), the loss terms of the last step."""
    notes = []
    if result.get('skipped_steps'):
        notes.append(f"{result['skipped_steps']} timed step(s) skipped by the fp16 loss scaler")
    sites = sorted((result.get('sync_sites') or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    if sites:
        notes.append('syncs at ' + ', '.join(f'{s} (x{n})' for s, n in sites[:6]))
    if result.get('wall_times') and result.get('cpu_times'):
        wall, cpu = median(result['wall_times']), median(result['cpu_times'])
        notes.append(f'wall {wall:.3f} s, CPU {cpu:.3f} s per step')
    notes.append('losses ' + ', '.join(f'{k} {v:.3g}' for k, v in result['losses'].items()))
    return '; '.join(notes)


def data_table(results: Sequence[Mapping[str, Any]], step_times: Mapping[str, float]) -> str:
    """Markdown table of pipeline results; cores per GPU where ``step_times`` has the row's key."""
    lines = ['| pipeline of | images/index | images/step | images/s/core | GPU step time (s) | '
             'cores/GPU |', '|' + '---|' * 6]
    for r in results:
        if r.get('error'):
            lines.append(f"| {r['name']} | failed: {r['error']} |" + ' |' * 4)
            continue
        st = step_times.get(r['key'])
        cores = (cores_per_gpu(r['images_per_step'], st, r['images_per_s_core'])
                 if st else None)
        lines.append(f"| {r['name']} | {r['images_per_index']} | {r['images_per_step']} | "
                     f"{r['images_per_s_core']:.1f} | {_fmt(st, '.3f')} | {_fmt(cores, '.1f')} |")
    return '\n'.join(lines)


def parse_gpu_step_times(values: Sequence[str], keys: Iterable[str]) -> Dict[str, float]:
    """``--gpu-step-time`` entries (``SECONDS`` for every row, or ``KEY=SECONDS``) -> per key."""
    keys = list(keys)
    out: Dict[str, float] = {}
    for v in values:
        key, _, secs = v.rpartition('=')
        try:
            seconds = float(secs)
        except ValueError:
            seconds = float('nan')
        if not seconds > 0:
            raise ValueError(f'--gpu-step-time expects SECONDS or KEY=SECONDS with SECONDS > 0, '
                             f'got {v!r}')
        if key and key not in MODELS:
            raise ValueError(f'--gpu-step-time {v!r}: unknown model key {key!r} '
                             f'(one of {", ".join(MODELS)})')
        for k in ([key] if key else keys):
            out[k] = seconds
    return out


# ----------------------------------------------------------------------------- configs and files
def config_path(key: str, work_dir: str) -> str:
    """The file the model ``key`` is built from (DINO's is written by :func:`prepare`)."""
    cfg = MODELS[key]['config']
    if cfg.startswith('mmpretrain::'):
        import mmpretrain
        return osp.join(osp.dirname(mmpretrain.__file__), '.mim', 'configs',
                        cfg[len('mmpretrain::'):])
    if not cfg:
        return osp.join(work_dir, f'dino_{MODELS[key]["backbone"].lower()}_bench.py')
    return osp.join(REPO, cfg)


def write_dino_config(path: str, backbone: str) -> str:
    b = BACKBONES[backbone]
    base = osp.join(REPO, 'configs', '_base_')
    with open(path, 'w') as f:
        f.write(DINO_CONFIG.format(model=osp.join(base, 'models', 'dino_vit.py'),
                                   data=osp.join(base, 'datasets', 'cotap_coco.py'),
                                   runtime=osp.join(base, 'default_runtime.py'), arch=b['arch'],
                                   embed_dims=b['embed_dims'], start=b['start']))
    return path


def write_start_checkpoint(work_dir: str, backbone: str, seed: int = 0,
                           depth: Optional[int] = None) -> str:
    """A random ViT (``depth`` blocks; None: 12) in the official DINO file layout (timm keys),
    converted to the cotap_mm layout with ``vit2cotap.py``'s code at the path the CoTAP configs
    load; returns that path."""
    import torch
    from cotap_mm.converters import convert_checkpoint
    from cotap_mm.models.backbones.vit_key_mapping import convert_to_timm
    from mmpretrain.registry import MODELS as MM_MODELS
    b = BACKBONES[backbone]
    torch.manual_seed(seed)
    cls = MM_MODELS.get('CoTAPViT')
    arch = dict(cls.arch_zoo[b['arch']], **({} if depth is None else dict(num_layers=depth)))
    vit = cls(arch=arch, img_size=224, patch_size=16)  # PyTorch's default init: cost is the same
    dino_file, start = osp.join(work_dir, b['dino_file']), osp.join(work_dir, b['start'])
    os.makedirs(osp.dirname(dino_file), exist_ok=True)
    torch.save(convert_to_timm(vit.state_dict()), dino_file)
    converted = convert_checkpoint(torch.load(dino_file, map_location='cpu', weights_only=True),
                                   src_format='dino')
    torch.save(converted, start)
    return start


def prepare(work_dir: str, keys: Sequence[str], num_images: int, image_size: Tuple[int, int],
            depth: Optional[int] = None, checkpoints: bool = True, seed: int = 0) -> None:
    """Generated data (the configs' layout and neighbour files), start checkpoints (unless
    ``checkpoints`` is False) and DINO configs under ``work_dir``."""
    import shutil

    from mmengine.config import Config

    from cotap_mm.datasets.paper_layout import write_paper_data
    os.makedirs(work_dir, exist_ok=True)
    data = write_paper_data(osp.join(work_dir, 'data'), num_coco=num_images,
                            num_imagenet=num_images, k=7, size=image_size[0],
                            width=image_size[1], photo_like=True, seed=seed)
    for backbone in sorted({MODELS[k]['backbone'] for k in keys} if checkpoints else ()):
        write_start_checkpoint(work_dir, backbone, seed, depth)
    for key in keys:
        if MODELS[key]['kind'] == 'dino':
            write_dino_config(config_path(key, work_dir), MODELS[key]['backbone'])
        if MODELS[key]['kind'] == 'cotap':
            for source, path in neighbour_files(Config.fromfile(config_path(key, work_dir))
                                                .train_dataloader.dataset):
                dst = osp.join(work_dir, path)
                os.makedirs(osp.dirname(dst), exist_ok=True)
                shutil.copyfile(data[f'{source}_nn'], dst)


def _replace_type(node: Any, old: str, new: str) -> None:
    if isinstance(node, dict):
        if node.get('type') == old:
            node['type'] = new
        for v in node.values():
            _replace_type(v, old, new)
    elif isinstance(node, (list, tuple)):
        for v in node:
            _replace_type(v, old, new)


def adapt_config(cfg: Any, key: str, images_per_step: int, iters: int, device: str, amp: str,
                 num_workers: int, depth: Optional[int], work_dir: str) -> int:
    """Turn a released config into the benchmark's (cost-neutral changes, see the module doc);
    returns the images per dataset index."""
    spec = MODELS[key]
    loader = cfg.train_dataloader
    per_index = images_per_index(loader.dataset)
    loader.update(batch_size=batch_size(images_per_step, per_index, spec['name']),
                  num_workers=num_workers, persistent_workers=num_workers > 0,
                  pin_memory=device.startswith('cuda'),
                  sampler=dict(type='InfiniteSampler', shuffle=True))  # a few images, many steps
    for k in ('val_dataloader', 'val_cfg', 'val_evaluator', 'test_dataloader', 'test_cfg',
              'test_evaluator'):
        cfg.pop(k, None)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters)
    for s in cfg.get('param_scheduler') or []:
        if s.get('by_epoch', True):  # same cost per step; epochs of generated data mean nothing
            s['by_epoch'] = False
            s.pop('convert_to_iter_based', None)
    cfg.default_hooks.checkpoint = None  # mmengine drops a default hook set to None
    cfg.default_hooks.pop('plain_checkpoint', None)
    # a training step only: no dense monitor (it evaluates every 10k iterations on COCO-Stuff-27)
    cfg.custom_hooks = [h for h in cfg.get('custom_hooks') or []
                        if h.get('type') != 'DenseMonitorHook']
    ow = cfg.optim_wrapper
    if amp == 'off':
        ow.type = 'OptimWrapper'
        ow.pop('loss_scale', None)
        ow.pop('dtype', None)
    else:
        ow.update(type='AmpOptimWrapper', dtype=AMP_DTYPES[amp])
    model = cfg.model
    if spec['kind'] == 'mocov3':  # SyncBN needs a process group: BN1d, the same on one process
        model.neck.norm_cfg = dict(type='BN1d')
        model.head.predictor.norm_cfg = dict(type='BN1d')
        # mmpretrain's ColorJitter fails on hue under NumPy 2: ours, same factors
        _replace_type(cfg.train_dataloader.dataset.pipeline, 'ColorJitter', 'HueSafeColorJitter')
        cfg.custom_imports = dict(imports=['cotap_mm'], allow_failed_imports=False)
    if spec['kind'] == 'cotap':  # each process holds size / GPUs queue entries
        gpus = released_gpus(spec['config'])
        for q in ('patch_queue', 'cls_queue'):
            if model.get(q):
                model[q].size = math.ceil(model[q].size / gpus)
    else:
        cfg.load_from = BACKBONES[spec['backbone']]['start']
    if depth is not None:
        from mmpretrain.registry import MODELS as MM_MODELS

        import cotap_mm  # noqa: F401
        bb = model.backbone
        zoo = {**MM_MODELS.get(bb.type).arch_zoo, **MOCOV3_ARCHS}
        arch = bb.arch if isinstance(bb.arch, dict) else zoo[bb.arch.lower()]
        bb.arch = dict(arch, num_layers=depth)
    cfg.work_dir = work_dir
    cfg.log_level = 'WARNING'
    cfg.launcher = 'none'
    cfg.randomness = dict(seed=0)
    return per_index


# ----------------------------------------------------------------------------- measurements
def steady_state(model: Any) -> List[str]:
    """Put CoTAP in the state of a late step: Sinkhorn queues full (random unit vectors), the
    prototype bank full, the prototypes initialised (student and teacher). Returns what was set."""
    import torch
    import torch.nn.functional as F

    from cotap_mm.models.utils.feature_queue import FeatureQueue
    done = []
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, FeatureQueue):  # the Sinkhorn queues and the prototype bank
                entries = torch.randn_like(m.queue)
                m.load_entries_(entries if name == 'proto_bank' else F.normalize(entries, dim=1))
                done.append(f'{name} ({m.capacity} entries)')
            if callable(getattr(m, 'mark_initialized', None)):
                m.mark_initialized()
                done.append(f'{name or "model"}.prototypes_initialized')
    return done


def _sync_site(filename: str, lineno: int) -> str:
    for marker in ('site-packages' + os.sep, REPO + os.sep):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
    return f'{filename}:{lineno}'


def measure_steps(spec: Mapping[str, Any]) -> Dict[str, Any]:
    """Build the runner of one model and time its training iterations (runs in the work dir)."""
    key, device = spec['key'], spec['device']
    path = config_path(key, spec['work_dir'])
    if not osp.isfile(path):  # before the heavy imports: fails fast
        raise FileNotFoundError(f'the config of {key} is not there: {path}')
    import torch
    from mmengine.config import Config
    from mmengine.hooks import Hook
    from mmengine.runner import Runner
    from torch.utils.flop_counter import FlopCounterMode

    import cotap_mm  # noqa: F401  (custom_imports of a config are read by Config.fromfile only)
    cuda = device.startswith('cuda')
    if spec.get('threads'):
        torch.set_num_threads(spec['threads'])
    if cuda and ':' in device:
        torch.cuda.set_device(device)
    warmup, steps = spec['warmup'], spec['steps']
    cfg = Config.fromfile(path)
    per_index = adapt_config(cfg, key, spec['images_per_step'], warmup + steps, device, spec['amp'],
                             spec['num_workers'], spec.get('depth'),
                             osp.join(spec['work_dir'], 'runs', key))
    out: Dict[str, Any] = dict(key=key, name=MODELS[key]['name'],
                               reference=REFERENCE[MODELS[key]['backbone']],
                               images_per_step=spec['images_per_step'],
                               images_per_index=per_index, times=[], wall_times=[],
                               cpu_times=[], skipped_steps=0)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    class StepProbe(Hook):
        def before_train(self, runner) -> None:
            out['steady_state'] = steady_state(runner.model) if spec['state'] == 'late' else []
            loop, run_iter = runner.train_loop, runner.train_loop.run_iter
            scaler = getattr(runner.optim_wrapper, 'loss_scaler', None)

            def probed_run_iter(data_batch) -> None:
                i = loop.iter
                if i == warmup - 1:  # the last warm-up step: FLOPs
                    with FlopCounterMode(display=False) as counter:
                        run_iter(data_batch)
                    out['flops'] = float(counter.get_total_flops())
                elif cuda and i == warmup - 2:  # the one before: host synchronisations
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter('always')
                        torch.cuda.set_sync_debug_mode('warn')
                        try:
                            run_iter(data_batch)
                        finally:
                            torch.cuda.set_sync_debug_mode(0)
                    sites = [_sync_site(w.filename, w.lineno) for w in caught
                             if 'synchroniz' in str(w.message)]
                    out['syncs'] = len(sites)
                    out['sync_sites'] = {s: sites.count(s) for s in sorted(set(sites))}
                elif i < warmup:
                    run_iter(data_batch)
                else:
                    if i == warmup:
                        sync()
                        if cuda:
                            torch.cuda.reset_peak_memory_stats()
                        else:  # peak RSS from here on (where /proc/self/clear_refs is writable)
                            reset_peak_rss()
                    scale = scaler.get_scale() if scaler is not None else None
                    sync()
                    t0, c0 = time.perf_counter(), time.process_time()
                    run_iter(data_batch)
                    sync()
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                    out['wall_times'].append(wall)
                    out['cpu_times'].append(cpu)
                    out['times'].append(cpu if spec.get('timer') == 'cpu' else wall)
                    if scale is not None and scaler.get_scale() < scale:
                        out['skipped_steps'] += 1  # fp16 overflow: the optimizer step was skipped
                    if i == warmup + steps - 1:
                        out['peak_bytes'] = float(torch.cuda.max_memory_allocated() if cuda else
                                                  (status_kb('VmHWM') or 0) * 1024)

            loop.run_iter = probed_run_iter

    runner = Runner.from_cfg(cfg)
    runner.register_hook(StepProbe(), priority='LOWEST')
    runner.train()
    out['losses'] = {k[len('train/'):]: float(v.current())
                     for k, v in runner.message_hub.log_scalars.items()
                     if k.startswith('train/loss')}
    out['device_name'] = torch.cuda.get_device_name() if cuda else \
        f'CPU ({torch.get_num_threads()} threads)'
    return out


def measure_data(spec: Mapping[str, Any],
                 measured: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Images per CPU-second of the config's dataset + collate in this process (one thread);
    ``measured`` (data loader config -> result) spares measuring the same pipeline twice."""
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner
    from mmengine.utils import import_modules_from_strings

    key = spec['key']
    torch.set_num_threads(1)
    try:
        import cv2
        cv2.setNumThreads(0)
    except ImportError:
        pass
    cfg = Config.fromfile(config_path(key, spec['work_dir']))
    per_index = adapt_config(cfg, key, spec['images_per_step'], 1, 'cpu', 'off', 0, None,
                             osp.join(spec['work_dir'], 'runs', key))
    signature = json.dumps([cfg.train_dataloader.to_dict(), spec['data_batches']],
                           sort_keys=True, default=str)
    result = dict(key=key, name=MODELS[key]['name'], images_per_step=spec['images_per_step'],
                  images_per_index=per_index)
    if measured is not None and signature in measured:
        return dict(measured[signature], **result)
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    batches = iter(Runner.build_dataloader(cfg.train_dataloader, seed=0))
    next(batches)  # warm-up: file cache, lazy initialisation
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(spec['data_batches']):
        next(batches)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    images = spec['data_batches'] * spec['images_per_step']
    result.update(images_per_s_core=images / cpu, images_per_s_wall=images / wall, cpu_s=cpu)
    if measured is not None:
        measured[signature] = result
    return result


def run_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """:func:`measure_steps` in a fresh process in the work dir; a failure becomes ``error``."""
    env = dict(os.environ)
    if spec.get('threads'):
        env['OMP_NUM_THREADS'] = str(spec['threads'])
    if spec['device'] == 'cpu':
        env['CUDA_VISIBLE_DEVICES'] = ''  # mmengine would move the model to a visible GPU
    proc = subprocess.run([sys.executable, osp.abspath(__file__), '--worker', json.dumps(spec)],
                          cwd=spec['work_dir'], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    err = (proc.stderr.strip() or proc.stdout.strip() or f'exit code {proc.returncode}')
    last = err.splitlines()[-1]
    print(f'[bench_step] {spec["key"]} failed:\n{err[-3000:]}', file=sys.stderr)
    return dict(key=spec['key'], name=MODELS[spec['key']]['name'],
                reference=REFERENCE[MODELS[spec['key']]['backbone']], error=last[:200])


# ----------------------------------------------------------------------------- command line
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--models', nargs='+', choices=list(MODELS), default=list(MODELS),
                   help='rows to measure (the MoCo v3 row of each backbone is always added)')
    p.add_argument('--device', default='cpu', help="'cpu' (default), 'cuda' or 'cuda:N'")
    p.add_argument('--amp', choices=('fp16', 'bf16', 'off'), default=None,
                   help="AMP dtype (default: fp16 on CUDA, as the configs; 'off' on CPU)")
    p.add_argument('--images-per-step', type=int, default=None,
                   help='images per step for every row (default: 4 on CPU; on CUDA the released '
                   'per-GPU number, 112 for ViT-S and 64 for ViT-B)')
    p.add_argument('--warmup', type=int, default=None,
                   help='untimed steps first (default 2 on CPU, 5 on CUDA); FLOPs are counted '
                   'over the last of them, host syncs (CUDA) over the one before')
    p.add_argument('--steps', type=int, default=None,
                   help='timed steps, median reported (default 3 on CPU, 10 on CUDA)')
    p.add_argument('--threads', type=int, default=None, help='torch threads per process')
    p.add_argument('--timer', choices=('wall', 'cpu'), default='wall',
                   help="step time: 'wall' clock (default), or the process's 'cpu' time (CPU "
                   'only: steadier than wall time on a machine shared with other jobs)')
    p.add_argument('--num-workers', type=int, default=None,
                   help='data-loader workers of the step runs (data loading is not timed; '
                   'default 0 on CPU, up to 8 on CUDA, to keep the run short)')
    p.add_argument('--peak-tflops', type=float, default=None,
                   help="the device's peak TFLOP/s for the AMP dtype (default: from a table of "
                   'known GPUs)')
    p.add_argument('--data', action='store_true',
                   help='measure the training pipeline alone (with --device cuda: the steps too)')
    p.add_argument('--data-batches', type=int, default=None,
                   help='timed batches of --data (default 8 on CPU, 4 on CUDA)')
    p.add_argument('--gpu-step-time', nargs='+', default=[], metavar='[KEY=]SECONDS',
                   help='--data: GPU step time(s) the pipeline has to keep up with')
    p.add_argument('--state', choices=('late', 'start'), default='late',
                   help="CoTAP's queues, bank and prototypes: 'late' (default) full and "
                   "initialised, as in a late step; 'start' as loaded (empty, as in the first "
                   'steps of a run)')
    p.add_argument('--depth', type=int, default=None,
                   help='transformer blocks of every backbone (default: the configs\'; small '
                   'values for quick checks)')
    p.add_argument('--num-images', type=int, default=32,
                   help='generated images per data set (COCO, ImageNet)')
    p.add_argument('--image-size', type=int, nargs=2, default=(480, 640), metavar=('H', 'W'),
                   help='generated image size (default 480 x 640, a COCO photo)')
    p.add_argument('--work-dir', default='work_dirs/bench_step')
    p.add_argument('--worker', default=None, help=argparse.SUPPRESS)  # internal: one model
    args = p.parse_args(argv)
    if args.worker is not None:
        return args
    cuda = args.device.startswith('cuda')
    if not re.fullmatch(r'cpu|cuda(:\d+)?', args.device):
        p.error(f"--device expects 'cpu', 'cuda' or 'cuda:N', got {args.device!r}")
    if cuda:
        import torch
        if not torch.cuda.is_available():
            p.error(f'--device {args.device}: no CUDA device here (torch.cuda.is_available() is '
                    'False); use --device cpu')
    args.amp = args.amp or ('fp16' if cuda else 'off')
    if not cuda and args.amp != 'off':
        p.error(f"--amp {args.amp} needs --device cuda (mmengine's AmpOptimWrapper has no CPU "
                "path); use --amp off")
    args.warmup = (5 if cuda else 2) if args.warmup is None else args.warmup
    args.steps = (10 if cuda else 3) if args.steps is None else args.steps
    args.data_batches = (4 if cuda else 8) if args.data_batches is None else args.data_batches
    if args.num_workers is None:
        args.num_workers = min(8, (os.cpu_count() or 2) - 1) if cuda else 0
    for name, value, low in (('--images-per-step', args.images_per_step, 1),
                             ('--warmup', args.warmup, 2 if cuda else 1),
                             ('--steps', args.steps, 1),
                             ('--threads', args.threads, 1), ('--num-workers', args.num_workers, 0),
                             ('--data-batches', args.data_batches, 1), ('--depth', args.depth, 2),
                             ('--num-images', args.num_images, 8)):
        if value is not None and value < low:
            why = {'--warmup': ' (FLOPs are counted over the last warm-up step' +
                   (', host syncs over the one before)' if cuda else ')'),
                   '--num-images': ' (7 neighbours per image)'}.get(name, '')
            p.error(f'{name} must be >= {low}{why}, got {value}')
    if cuda and args.timer == 'cpu':
        p.error("--timer cpu measures host CPU time: use --timer wall with --device cuda")
    if min(args.image_size) < 96:
        p.error(f'--image-size must be >= 96 x 96 (the local crops), got {args.image_size}')
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        p.error(f'--peak-tflops must be > 0, got {args.peak_tflops}')
    if args.gpu_step_time and not args.data:
        p.error('--gpu-step-time is for --data (the cores per GPU of the pipeline)')
    try:
        args.gpu_step_times = parse_gpu_step_times(args.gpu_step_time, MODELS)
    except ValueError as e:
        p.error(str(e))
    return args


def selected_keys(models: Sequence[str]) -> List[str]:
    """``models`` plus the MoCo v3 reference of each backbone, in table order."""
    wanted = set(models) | {REFERENCE[MODELS[k]['backbone']] for k in models}
    return [k for k in MODELS if k in wanted]


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(measure_steps(json.loads(args.worker))))
        return {}
    t0 = time.time()
    keys = selected_keys(args.models)
    work = osp.abspath(args.work_dir)
    cuda = args.device.startswith('cuda')
    measure_steps_too = cuda or not args.data
    prepare(work, keys, args.num_images, tuple(args.image_size), args.depth,
            checkpoints=measure_steps_too)
    base = dict(work_dir=work, device=args.device, amp=args.amp, warmup=args.warmup,
                steps=args.steps, threads=args.threads, num_workers=args.num_workers,
                depth=args.depth, data_batches=args.data_batches, state=args.state,
                timer=args.timer)

    def images(key: str) -> int:
        return args.images_per_step or (BACKBONES[MODELS[key]['backbone']]['cuda_images']
                                        if cuda else 4)

    steps: List[Dict[str, Any]] = []
    if measure_steps_too:
        for key in keys:
            r = run_worker(dict(base, key=key, images_per_step=images(key)))
            steps.append(r)
            print(f'[bench_step] {key}: ' + (f"{median(r['times']):.3f} s/step, "
                                            f"{r['flops'] / 1e9:.0f} GFLOP" if not r.get('error')
                                            else 'failed'), file=sys.stderr, flush=True)
    datas: List[Dict[str, Any]] = []
    if args.data:
        cwd = os.getcwd()
        os.chdir(work)
        try:
            measured: Dict[str, Dict[str, Any]] = {}  # ViT-S and ViT-B rows share pipelines
            for key in keys:
                r = measure_data(dict(base, key=key, images_per_step=images(key)), measured)
                datas.append(r)
                print(f"[bench_step] data {key}: {r['images_per_s_core']:.1f} images/s/core",
                      file=sys.stderr, flush=True)
        finally:
            os.chdir(cwd)
    cmd = 'python tools/benchmarks/bench_step.py ' + ' '.join(
        sys.argv[1:] if argv is None else argv)
    ok = [r for r in steps if not r.get('error')]
    dtype = 'fp32' if args.amp == 'off' else args.amp
    peak = None
    if steps:
        device_name = ok[0]['device_name'] if ok else args.device
        peak = lookup_peak_tflops(device_name, dtype, args.peak_tflops) if cuda else None
        device = f'{device_name}; {dtype}' + (
            f'; peak {peak:g} TFLOP/s' if peak else
            ('; peak unknown, pass --peak-tflops for MFU' if cuda else ''))
    else:
        device = f'the data pipeline only, on CPU ({os.cpu_count()} cores here)'
    lines = [f'Command: `{cmd}`  ', f'Device: {device}; {time.time() - t0:.0f} s in all.', '']
    if steps:
        timer = 'process CPU time' if args.timer == 'cpu' else 'wall clock'
        lines += [f'Steps: {args.warmup} warm-up + {args.steps} timed per model (median, '
                  f'{timer}); depth {args.depth or "as configured"}; CoTAP state '
                  f'{args.state!r}.', '',
                  step_table(steps, peak), '']
        lines += [f"- {r['name']}: {step_notes(r)}" for r in ok] + ['']
    if datas:
        step_times = dict(args.gpu_step_times)  # given ones win over measured ones
        for r in ok if cuda else []:
            step_times.setdefault(r['key'], median(r['times']))
        lines += ['Data pipeline: one process, one thread, CPU time per image '
                  f'({args.data_batches} batches after one warm-up).', '',
                  data_table(datas, step_times), '']
    report = '\n'.join(lines)
    print(report)
    return dict(steps=steps, data=datas, report=report, peak_tflops=peak)


if __name__ == '__main__':
    main()

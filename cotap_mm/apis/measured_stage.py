"""A training stage with its cost: the runner's mean step time and the peak memory of training.

Used by ``tools/benchmarks/bench_dense_methods.py``, which runs each stage in a fresh process so
that peak memories do not mix. On CPU the peak is the resident-memory high-water mark during
``runner.train()`` above the resident memory just before it (Linux ``/proc/self/status``, the mark
reset through ``/proc/self/clear_refs``); on CUDA ``torch.cuda.max_memory_allocated``. The numbers
are kept beside the checkpoint (``stage_stats.json``) so that a re-run that finds the stage done
reports them instead of nothing; a stage resumed after an interruption reports what its last
process measured.
"""
import json
import os.path as osp
from typing import Any, Dict

import torch

from cotap_mm.engine.memory import reset_peak_rss, status_kb
from .training_stages import train_stage

__all__ = ['STAGE_STATS', 'run_measured_stage']

STAGE_STATS = 'stage_stats.json'


def _hwm_kb() -> float:
    kb = status_kb('VmHWM')
    return float('nan') if kb is None else float(kb)


def run_measured_stage(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Train one stage (:func:`train_stage`) and measure it.

    Args:
        spec (dict): ``cfg``, ``work_dir``, ``iters``, ``seed``, ``mode`` (``'load_from'``: the
            whole model starts from ``start``; ``'init_from'``: its backbone; anything else: no
            start), ``start`` (checkpoint or None), ``overrides`` (config keys; lists become
            tuples, as JSON turned them into lists).

    Returns:
        dict: ``ckpt``, ``step_time`` (s, mean of the runner's ``train/time``) and ``peak_mb``
        (NaN when neither this run nor an earlier one measured them).
    """
    from mmengine.runner import Runner
    stats: Dict[str, float] = {}
    orig_train = Runner.train

    def train_and_measure(self):  # record the runner's own step time before it is torn down
        # the baseline is read back from VmHWM, the counter the peak is read from: VmRSS and
        # VmHWM are summed from per-thread counters at different times and can disagree
        reset_peak_rss()
        base = _hwm_kb()
        result = orig_train(self)
        stats['step_time'] = float(self.message_hub.get_scalar('train/time').mean())
        # the kernel's per-thread RSS counters are summed lazily (up to ~64 pages each), so a run
        # that allocates next to nothing can read a few hundred KB below its baseline: floor at 0
        stats['peak_mb'] = max(0.0, (_hwm_kb() - base) / 1024)
        return result

    extra = {k: tuple(v) if isinstance(v, list) else v
             for k, v in spec.get('overrides', {}).items()}
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
    return dict(ckpt=ckpt, step_time=stats.get('step_time', float('nan')),
                peak_mb=stats.get('peak_mb', float('nan')))

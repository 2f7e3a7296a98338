"""Tests of CollapseMonitorHook (cotap_mm/engine/hooks/collapse_monitor_hook.py)."""
import math
import os.path as osp
from types import SimpleNamespace

import pytest
import torch

from cotap_mm.engine.hooks.collapse_monitor_hook import CollapseMonitorHook, collapse_verdict
from cotap_test_helpers.tool_runs import train_in_process


class _Logger:

    def __init__(self):
        self.warnings = []

    def warning(self, msg):
        self.warnings.append(msg)


def _feed(hook, rows, prefix='dino_'):
    runner = SimpleNamespace(logger=_Logger(), iter=0)
    for i, (h, m) in enumerate(rows):
        runner.iter = i
        out = {'loss': torch.tensor(1.0), f'{prefix}teacher_entropy': torch.tensor(h),
               f'{prefix}teacher_marginal_entropy': torch.tensor(m)}
        hook.after_train_iter(runner, i, None, out)
    return runner.logger.warnings


def test_verdict_of_the_two_collapse_modes():
    ln32 = math.log(32)
    assert collapse_verdict(0.4, ln32) is None  # confident samples spread over prototypes
    assert collapse_verdict(0.99 * ln32, ln32) == 'uniform'
    assert collapse_verdict(0.0, 0.01) == 'one dimension'
    assert collapse_verdict(0.9 * ln32, ln32, uniform_ratio=0.95) is None
    assert collapse_verdict(0.9 * ln32, ln32, uniform_ratio=0.85) == 'uniform'


def test_warns_once_after_a_full_window_of_uniform_outputs():
    hook = CollapseMonitorHook(window=3)
    healthy = _feed(hook, [(0.5, 3.4)] * 10)
    assert healthy == [] and hook.warned == {}
    # the demo's DINO start: 3.42 of 3.46 nats
    warnings = _feed(hook, [(0.5, 3.4)] * 2 + [(3.42, 3.46)] * 10)
    assert len(warnings) == 1 and hook.warned == {'dino_': 'uniform'}
    assert 'uniform' in warnings[0] and '3.420' in warnings[0] and 'iteration 5' in warnings[0]


def test_one_dimension_collapse_and_other_prefixes():
    hook = CollapseMonitorHook(window=2, prefixes=('cls_', ))
    assert _feed(hook, [(0.0, 0.01)] * 3, prefix='dino_') == []  # not monitored
    warnings = _feed(hook, [(0.0, 0.01)] * 3, prefix='cls_')
    assert len(warnings) == 1 and 'one dimension' in warnings[0]


def test_start_iter_and_missing_keys():
    hook = CollapseMonitorHook(window=2, start_iter=5)
    assert _feed(hook, [(3.4, 3.4)] * 5) == []  # iterations 0-4 ignored
    runner = SimpleNamespace(logger=_Logger(), iter=10)
    hook.after_train_iter(runner, 0, None, {'loss': torch.tensor(1.0)})
    hook.after_train_iter(runner, 0, None, None)
    assert runner.logger.warnings == []


@pytest.mark.parametrize('kwargs, match', [
    (dict(window=0), 'window'), (dict(window=2.5), 'window'),
    (dict(uniform_ratio=0), 'uniform_ratio'),
    (dict(uniform_ratio=1.5), 'uniform_ratio'), (dict(min_marginal_entropy=-1), 'min_marginal'),
    (dict(prefixes='dino_'), 'prefixes'), (dict(prefixes=()), 'prefixes'),
    (dict(start_iter=-1), 'start_iter')])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CollapseMonitorHook(**kwargs)


def test_dino_run_logs_the_warning(tmp_path):
    """With the DINO config's hook made eager (window 1, any ratio counts), tools/train.py
    writes the warning into the run's log file."""
    repo = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    cfg = osp.join(repo, 'configs/dino/dino_vit-tiny-p8_1xb8-1500it_synthetic.py')
    train_in_process([
        cfg, '--work-dir', str(tmp_path), '--cfg-options', 'train_cfg.max_iters=2',
        'default_hooks.logger.interval=1', 'train_dataloader.batch_size=2',
        'train_dataloader.dataset.num_samples=4', 'default_hooks.checkpoint.interval=2',
        'custom_hooks.1.window=1', 'custom_hooks.1.uniform_ratio=0.001',
        'custom_hooks.1.start_iter=0'
    ])
    logs = list(tmp_path.glob('*/*.log'))
    text = logs[0].read_text()
    assert text.count('CollapseMonitorHook: dino_* term collapsed to a uniform output') == 1

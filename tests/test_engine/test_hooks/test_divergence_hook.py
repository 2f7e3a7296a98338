"""A diverged run stops with a useful error; tolerated non-finite steps are not applied."""
import math
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper

import cotap_mm  # noqa: F401
import cotap_test_helpers.fault_hooks  # noqa: F401  (registers the fault hooks)
from cotap_mm.engine.hooks.divergence_hook import StepGuard
from cotap_mm.utils.divergence import DivergenceError, nonfinite_tensors
from cotap_test_helpers.tiny_runs import REPO_ROOT
from cotap_test_helpers.tool_runs import train_in_process

pytestmark = pytest.mark.usefixtures('one_thread')
DINO_TINY = osp.join(REPO_ROOT, 'configs/dino/dino_vit-tiny-p8_1xb8-1500it_synthetic.py')


def _dino(work, name, iters, *opts, hooks=None):
    """tools/train.py arguments of a short tiny-DINO run, with ``hooks`` added to its own."""
    cfg = DINO_TINY
    if hooks:
        cfg = str(work / 'cfg.py')
        with open(cfg, 'w') as f:
            f.write(f'_base_ = [{DINO_TINY!r}]\n'
                    "custom_imports = dict(imports=['cotap_mm', 'cotap_test_helpers.fault_hooks'],"
                    ' allow_failed_imports=False)\n'
                    f'custom_hooks = _base_.custom_hooks + {hooks!r}\n')
    return [cfg, '--work-dir', str(work), '--cfg-options', f'experiment_name={name}',
            f'train_cfg.max_iters={iters}', 'train_dataloader.batch_size=2',
            'train_dataloader.dataset.num_samples=8', 'default_hooks.logger.interval=1',
            'default_hooks.checkpoint.interval=2', *opts]


def test_step_guard_does_not_apply_a_non_finite_step():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    guard = StepGuard(OptimWrapper(torch.optim.SGD(lin.parameters(), lr=0.1)))
    before = [p.detach().clone() for p in lin.parameters()]
    lin.weight.data[0, 0] = 1.0
    loss = (lin(torch.ones(1, 3)) * math.inf).sum()
    guard.ow.update_params(loss)
    assert guard.skipped_now and not math.isfinite(guard.last_norm)
    assert all(p.grad is None or not p.grad.any() for p in lin.parameters())  # discarded
    lin.weight.data[0, 0] = before[0][0, 0]
    assert all(torch.equal(p, b) for p, b in zip(lin.parameters(), before))
    guard.ow.update_params(lin(torch.ones(1, 3)).sum())
    assert not guard.skipped_now
    assert not torch.equal(lin.weight, before[0])
    guard.restore()
    assert 'update_params' not in guard.ow.__dict__


def test_nonfinite_tensors_are_named():
    state = {'a': torch.ones(2), 'b': torch.tensor([1.0, math.nan]), 'n': torch.tensor(3),
             'c': torch.tensor([math.inf])}
    assert nonfinite_tensors(state) == ['b', 'c']


def test_forced_divergence_stops_naming_iteration_terms_and_last_checkpoint(tmp_path):
    with pytest.raises(DivergenceError) as err:
        train_in_process(_dino(tmp_path, 'div_lr', 10, 'optim_wrapper.optimizer.lr=10000.0'))
    msg = str(err.value)
    assert 'training diverged at iteration 3: non-finite grad_norm=nan' in msg
    assert f'Last good checkpoint: {tmp_path}/iter_2.pth' in msg
    saved = torch.load(tmp_path / 'iter_2.pth', weights_only=True)['state_dict']
    assert not nonfinite_tensors(saved)
    assert not (tmp_path / 'iter_4.pth').exists()


def test_forced_divergence_stops_cotap_with_the_same_error(tmp_path):
    """CoTAP used to stop with an input-validation message of its loss, without the iteration."""
    cfg = osp.join(REPO_ROOT, 'configs/cotap/cotap_vit-tiny-p8_1xb8-demo_synthetic.py')
    with pytest.raises(DivergenceError, match=r'training diverged at iteration \d+: non-finite '
                       r'.*grad_norm=nan\. Last good checkpoint: none saved yet'):
        train_in_process([cfg, '--work-dir', str(tmp_path), '--cfg-options',
                          'experiment_name=div_cotap', 'train_cfg.max_iters=6',
                          'train_dataloader.batch_size=4', 'model.bank_size=16',
                          'model.bank_samples_per_step=16', 'custom_hooks.1.interval=1000',
                          'optim_wrapper.optimizer.lr=10000.0'])
    assert not list(tmp_path.glob('iter_*.pth'))


def test_tolerated_non_finite_step_is_skipped_then_the_run_stops(tmp_path):
    with pytest.raises(DivergenceError, match=r'iteration 3: non-finite loss=nan, '
                       r'loss_dino=nan, grad_norm=nan.*iter_2\.pth.*\(1 earlier non-finite step'):
        train_in_process(_dino(tmp_path, 'div_tol', 4, 'default_hooks.checkpoint.interval=1',
                               'default_hooks.divergence.max_skipped_steps=1',
                               hooks=[dict(type='NaNBatchHook', iters=[2, 3])]))
    log = next(tmp_path.glob('*/*.log')).read_text()
    assert 'iteration 2: non-finite loss=nan, loss_dino=nan, grad_norm=nan; step not applied ' \
           '(1 of max_skipped_steps=1)' in log
    first, second = (torch.load(tmp_path / f'iter_{i}.pth', weights_only=True) for i in (1, 2))
    assert second['message_hub']['runtime_info']['divergence_skipped_steps'] == 1
    # the skipped step left no trace: student weights and buffers (the DINO centre) unchanged
    for k, v in first['state_dict'].items():
        if not k.startswith('teacher.'):  # the EMA teacher still moves towards the student
            assert torch.equal(second['state_dict'][k], v), k
    assert not nonfinite_tensors(second['state_dict'])


def test_non_finite_model_is_never_saved(tmp_path):
    with pytest.raises(DivergenceError, match=r'refusing to save iter_2\.pth at iteration 2: 2 '
                       r'model tensor\(s\) hold NaN or inf '
                       r'\(backbone\.cls_token, teacher\.backbone\.cls_token\)'):
        train_in_process(_dino(tmp_path, 'div_save', 4,  # poisoned after DivergenceHook's check
                               hooks=[dict(type='NaNWeightHook', at=2)]))
    assert not list(tmp_path.glob('*iter_2.pth*'))

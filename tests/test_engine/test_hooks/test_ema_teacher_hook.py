import copy
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.logging import MessageHub
from mmengine.model import BaseDataPreprocessor
from mmengine.runner import Runner

from cotap_mm.engine.hooks.ema_teacher_hook import EMATeacherHook, cosine_momentum
from cotap_mm.models.algorithms.base import (TeacherStudentSelfSupervisor, ema_update_,
                                             paired_tensors)
from mmpretrain.registry import HOOKS


def dino_cosine_scheduler(base_value, final_value, total_iters):
    """DINO's ``utils.cosine_scheduler`` (no warm-up), the reference for the schedule."""
    iters = np.arange(total_iters)
    return final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))


def _net():
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


class ToyModel(TeacherStudentSelfSupervisor):
    """A one-module student (``backbone``) and its teacher, which starts different on purpose."""

    def __init__(self):
        super().__init__(backbone=_net(), data_preprocessor=BaseDataPreprocessor())
        self.build_teacher(('backbone', ))
        with torch.no_grad():
            for p in self.teacher.parameters():
                p.normal_()

    def loss(self, inputs, data_samples=None):
        return dict(loss=((self.backbone(inputs) - 1.0)**2).mean())

    def forward(self, inputs, data_samples=None, mode='tensor'):
        return self.loss(inputs) if mode == 'loss' else self.backbone(inputs)


class Recorder(Hook):
    priority = 'LOWEST'

    def __init__(self):
        self.students, self.iters, self.teacher_before_train = [], [], None

    def before_train(self, runner):
        self.teacher_before_train = copy.deepcopy(runner.model.teacher.state_dict())

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.students.append(copy.deepcopy(runner.model.student.state_dict()))
        self.iters.append(runner.iter)


class Interrupted(Exception):
    pass


class StopAt(Hook):

    def __init__(self, it):
        self.it = it

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter == self.it:
            raise Interrupted


def _fake_runner(model, it=0, max_iters=10, should_update=True):
    return SimpleNamespace(model=model, iter=it, max_iters=max_iters,
                           logger=logging.getLogger('test_ema'),
                           message_hub=MessageHub.get_instance('test_ema_teacher_hook'),
                           optim_wrapper=SimpleNamespace(should_update=lambda: should_update))


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_state_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6, msg=lambda s: f'{k}: {s}')


# ----------------------------------------------------------------------------- pure functions
def test_cosine_momentum_start_middle_end():
    assert cosine_momentum(0, 100, 0.9997, 0.9999) == pytest.approx(0.9997, abs=1e-12)
    assert cosine_momentum(50, 100, 0.9997, 0.9999) == pytest.approx(0.9998, abs=1e-12)
    assert cosine_momentum(100, 100, 0.9997, 0.9999) == pytest.approx(0.9999, abs=1e-12)
    assert cosine_momentum(500, 100, 0.9997, 0.9999) == pytest.approx(0.9999, abs=1e-12)
    ref = dino_cosine_scheduler(0.9997, 0.9999, 37)
    ours = [cosine_momentum(t, 37, 0.9997, 0.9999) for t in range(37)]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match='max_steps'):
        cosine_momentum(0, 0, 0.9, 0.99)
    with pytest.raises(ValueError, match='end'):
        cosine_momentum(0, 10, 0.9, 1.5)


def _ema(teacher, student, m):
    ema_update_(*paired_tensors(teacher, student), m)


def test_ema_update_formula_and_buffers():
    torch.manual_seed(0)
    teacher, student = _net(), _net()
    student[1].running_mean.normal_()
    t0, s0 = _state(teacher), _state(student)
    _ema(teacher, student, 0.75)
    for k in ('0.weight', '0.bias', '1.weight', '1.bias'):
        torch.testing.assert_close(teacher.state_dict()[k], 0.75 * t0[k] + 0.25 * s0[k])
    for k in ('1.running_mean', '1.running_var', '1.num_batches_tracked'):
        assert torch.equal(teacher.state_dict()[k], s0[k])
    # momentum 1 keeps the teacher parameters
    t1 = _state(teacher)
    _ema(teacher, student, 1.0)
    torch.testing.assert_close(teacher[0].weight, t1['0.weight'])
    # no autograd graph is built
    student[0].weight.requires_grad_(True)
    _ema(teacher, student, 0.5)
    assert teacher[0].weight.grad_fn is None
    with pytest.raises(ValueError, match='momentum'):
        _ema(teacher, student, -0.1)
    with pytest.raises(ValueError, match='same parameters'):
        _ema(nn.Linear(4, 3), student, 0.5)
    with pytest.raises(ValueError, match='differ in shape'):
        _ema(nn.Linear(4, 3), nn.Linear(5, 3), 0.5)


# ----------------------------------------------------------------------------- hook, fake runner
def test_hook_fake_runner_k_steps_against_manual_loop():
    torch.manual_seed(0)
    model = ToyModel()
    hook = EMATeacherHook(momentum=0.6, end_momentum=0.95)
    runner = _fake_runner(model, it=0, max_iters=5)
    hook.before_train(runner)
    _assert_state_equal(_state(model.teacher), _state(model.student))
    ref = {k: v.clone() for k, v in model.student.state_dict().items()}
    for it in range(5):
        with torch.no_grad():
            for p in model.student.parameters():
                p.add_(torch.randn_like(p))
            model.backbone[1].running_mean.add_(1.0)
        runner.iter = it
        hook.after_train_iter(runner, batch_idx=it)
        m = 0.95 - (0.95 - 0.6) * (math.cos(math.pi * it / 5) + 1) / 2
        s = model.student.state_dict()
        for k in ref:
            is_buffer = 'running' in k or 'num_batches' in k
            ref[k] = s[k].clone() if is_buffer else m * ref[k] + (1 - m) * s[k]
        assert runner.message_hub.get_scalar('train/ema_momentum').current() == \
            pytest.approx(m)
    _assert_state_equal(_state(model.teacher), ref)


def test_hook_initialisation_rules():
    torch.manual_seed(0)
    # the flag decides: a loaded teacher (flag True) is kept, also at iteration 0
    model = ToyModel()
    model.teacher_initialized.fill_(True)
    t0 = _state(model.teacher)
    EMATeacherHook().before_train(_fake_runner(model, it=0))
    _assert_state_equal(_state(model.teacher), t0)
    # flag False (a fresh run, or a start checkpoint without a teacher): copy, then set
    model.teacher_initialized.fill_(False)
    EMATeacherHook().before_train(_fake_runner(model, it=3))
    _assert_state_equal(_state(model.teacher), _state(model.student))
    assert bool(model.teacher_initialized)
    model = ToyModel()
    model.teacher_initialized.fill_(True)
    EMATeacherHook(init_teacher='always').before_train(_fake_runner(model, it=7))
    _assert_state_equal(_state(model.teacher), _state(model.student))
    model = ToyModel()
    t0 = _state(model.teacher)
    EMATeacherHook(init_teacher='never').before_train(_fake_runner(model, it=0))
    _assert_state_equal(_state(model.teacher), t0)
    assert bool(model.teacher_initialized)


def test_hook_freezes_teacher_skips_accumulation_and_checks_names():
    model = ToyModel()
    model.teacher.requires_grad_(True)
    hook = EMATeacherHook()
    hook.before_train(_fake_runner(model))
    assert not any(p.requires_grad for p in model.teacher.parameters())
    with torch.no_grad():
        model.backbone[0].weight.add_(1.0)
    t0 = _state(model.teacher)
    hook.after_train_iter(_fake_runner(model, should_update=False), batch_idx=0)
    _assert_state_equal(_state(model.teacher), t0)
    hook.after_train_iter(_fake_runner(model, should_update=True), batch_idx=0)
    assert not torch.equal(model.teacher['backbone'][0].weight, t0['backbone.0.weight'])
    EMATeacherHook(teacher_name='teacher', student_name='student',
                   init_flag_name='teacher_initialized')  # the old config keys still parse
    with pytest.raises(TypeError, match='ema_model'):
        EMATeacherHook(teacher_name='ema_model')
    with pytest.raises(TypeError, match='update_teacher'):
        EMATeacherHook().before_train(_fake_runner(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match='init_teacher'):
        EMATeacherHook(init_teacher='sometimes')
    with pytest.raises(ValueError, match='momentum'):
        EMATeacherHook(momentum=1.2)


def test_hook_unwraps_ddp(tmp_path):
    import torch.distributed as dist
    from mmengine.model import MMDistributedDataParallel
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/pg', rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = ToyModel()
        wrapped = MMDistributedDataParallel(model, device_ids=None, broadcast_buffers=False)
        hook = EMATeacherHook(momentum=0.5, end_momentum=0.5)
        runner = _fake_runner(wrapped)
        hook.before_train(runner)
        _assert_state_equal(_state(model.teacher), _state(model.student))
        t0 = _state(model.teacher)
        with torch.no_grad():
            model.backbone[0].weight.add_(2.0)
        hook.after_train_iter(runner, batch_idx=0)
        torch.testing.assert_close(model.teacher['backbone'][0].weight,
                                   t0['backbone.0.weight'] + 1.0)
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- real Runner
def _runner(tmp_path, name, model, hooks, max_iters, **kwargs):
    data = [dict(inputs=torch.randn(4, generator=torch.Generator().manual_seed(i)))
            for i in range(16)]
    return Runner(
        model=model,
        work_dir=str(tmp_path / name),
        experiment_name=name,
        train_dataloader=dict(dataset=data, sampler=dict(type='DefaultSampler', shuffle=False),
                              batch_size=4, num_workers=0,
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        custom_hooks=hooks,
        default_hooks=dict(checkpoint=None, logger=dict(type='LoggerHook', interval=100)),
        default_scope='mmpretrain',
        **kwargs)


def _ema_reference(teacher0, students, iters, start, end, max_iters):
    ref = {k: v.clone() for k, v in teacher0.items()}
    for s, it in zip(students, iters):
        m = end - (end - start) * (math.cos(math.pi * it / max_iters) + 1) / 2
        for k in ref:
            ref[k] = s[k].clone() if ('running' in k or 'num_batches' in k) else \
                m * ref[k] + (1 - m) * s[k]
    return ref


def test_real_runner_train_and_resume(tmp_path):
    torch.manual_seed(0)
    model = ToyModel()
    init_student = _state(model.student)
    assert not torch.equal(model.teacher['backbone'][0].weight, model.backbone[0].weight)
    rec = Recorder()
    hook_cfg = dict(type='EMATeacherHook', momentum=0.5, end_momentum=0.9)
    runner = _runner(tmp_path, 'run1', model, [hook_cfg, rec], max_iters=6)
    assert isinstance(runner.hooks[[type(h).__name__ for h in runner.hooks].index(
        'EMATeacherHook')], EMATeacherHook)
    # interrupt the 6-iteration run after 4 iterations (after the EMA update of iteration 3)
    runner.register_hook(StopAt(3), priority='LOWEST')
    with pytest.raises(Interrupted):
        runner.train()
    # teacher was initialised from the student, then followed the EMA of the student
    _assert_state_equal(rec.teacher_before_train, init_student)
    assert rec.iters == [0, 1, 2, 3]
    ref = _ema_reference(init_student, rec.students, rec.iters, 0.5, 0.9, 6)
    _assert_state_equal(_state(model.teacher), ref)
    assert not torch.equal(model.teacher['backbone'][0].weight, model.backbone[0].weight)

    # checkpoint holding plain data only (loads with torch.load(weights_only=True))
    ckpt = dict(meta=dict(epoch=0, iter=runner.iter + 1), state_dict=runner.model.state_dict(),
                optimizer=runner.optim_wrapper.state_dict(),
                message_hub=dict(log_scalars={}, runtime_info={}, resumed_keys={}))
    torch.save(ckpt, tmp_path / 'iter_4.pth')
    saved_teacher = _state(model.teacher)

    torch.manual_seed(1)
    model2 = ToyModel()  # fresh random weights everywhere
    rec2 = Recorder()
    runner2 = _runner(tmp_path, 'run2', model2, [hook_cfg, rec2], max_iters=6,
                      load_from=str(tmp_path / 'iter_4.pth'), resume=True)
    runner2.train()
    # the resumed teacher was kept, not re-copied from the student
    _assert_state_equal(rec2.teacher_before_train, saved_teacher)
    assert rec2.iters == [4, 5]
    ref2 = _ema_reference(saved_teacher, rec2.students, rec2.iters, 0.5, 0.9, 6)
    _assert_state_equal(_state(model2.teacher), ref2)


def test_registered():
    assert HOOKS.get('EMATeacherHook') is EMATeacherHook

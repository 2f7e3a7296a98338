"""TrainableParamsOptimWrapperConstructor: a frozen teacher is left out without a warning per
tensor and summarised in one line; the trainable groups are MMEngine's."""
import logging

import torch
from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

import cotap_mm  # noqa: F401
from cotap_mm.engine.optimizers import TrainableParamsOptimWrapperConstructor
from mmpretrain.registry import OPTIM_WRAPPER_CONSTRUCTORS

CFG = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05))
PARAMWISE = dict(norm_decay_mult=0.0, custom_keys={'head': dict(lr_mult=10.0)})


class Student(nn.Module):

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
        self.head = nn.Linear(8, 2)
        self.teacher = nn.ModuleDict(dict(backbone=nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8)),
                                          head=nn.Linear(8, 2)))
        self.teacher.requires_grad_(False)


def _log_to(tmp_path, name):
    path = tmp_path / f'{name}.log'
    MMLogger.get_instance(name, log_file=str(path), log_level=logging.INFO)
    return path


def _groups(wrapper):
    return [(tuple(id(p) for p in g['params']), g['lr'], g['weight_decay'])
            for g in wrapper.optimizer.param_groups]


def test_frozen_teacher_left_out_with_one_summary_line(tmp_path):
    torch.manual_seed(0)
    model = Student()
    log = _log_to(tmp_path, 'trainable_params_ours')
    ours = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(type='TrainableParamsOptimWrapperConstructor',
                                                 optim_wrapper_cfg=CFG, paramwise_cfg=PARAMWISE))
    assert isinstance(ours, TrainableParamsOptimWrapperConstructor)
    wrapper = ours(model)
    text = log.read_text()
    assert 'requires_grad' not in text
    lines = [l for l in text.splitlines() if 'optimizer:' in l]
    assert len(lines) == 1
    assert lines[0].endswith('optimizer: 6 trainable parameter tensors (0.0M values); 6 frozen '
                             'tensors (0.0M values) not optimised: teacher (6)')
    trainable = [p for n, p in model.named_parameters() if not n.startswith('teacher.')]
    got = [p for g in wrapper.optimizer.param_groups for p in g['params']]
    assert sorted(map(id, got)) == sorted(map(id, trainable))

    # the same groups (lr, weight decay) as MMEngine's constructor, which warns per frozen tensor
    ref_log = _log_to(tmp_path, 'trainable_params_ref')
    ref = DefaultOptimWrapperConstructor(CFG, PARAMWISE)(model)
    assert _groups(wrapper) == _groups(ref)
    assert ref_log.read_text().count('requires_grad=False') == 6


def test_mixed_module_keeps_the_parents_warning(tmp_path):
    model = Student()
    model.head.bias.requires_grad_(False)  # a module with trainable and frozen tensors of its own
    log = _log_to(tmp_path, 'trainable_params_mixed')
    wrapper = TrainableParamsOptimWrapperConstructor(CFG, PARAMWISE)(model)
    text = log.read_text()
    assert text.count('requires_grad=False') == 1 and 'head.bias is skipped' in text
    assert 'not optimised: teacher (6)' in text
    assert sum(len(g['params']) for g in wrapper.optimizer.param_groups) == 5

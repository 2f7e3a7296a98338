"""Strict start weights: what differs, and when it is an error."""
import logging

import pytest
import torch
from mmengine.logging import MMLogger

from cotap_mm.utils.start_weights import (StartWeightsError, check_start_weights,
                                          compare_state_dicts, quiet_mmengine_load)


def _sd(**shapes):
    return {k.replace('__', '.'): torch.zeros(s) for k, s in shapes.items()}


def test_compare_lists_missing_unexpected_and_mis_shaped_keys():
    model = _sd(a=(2, 3), b=(4, ), pos_embed=(1, 17, 8), bn__num_batches_tracked=())
    ckpt = _sd(a=(3, 3), pos_embed=(1, 65, 8), extra=(1, ))
    r = compare_state_dicts(model, ckpt)
    assert r.missing == ['b']  # num_batches_tracked never counts (as MMEngine)
    assert r.mismatched == [('a', (3, 3), (2, 3))]
    assert r.unexpected == ['extra']
    assert r.matched == ['pos_embed']  # another grid: resized on load
    assert compare_state_dicts(_sd(pos_embed=(1, 17, 8)),
                               _sd(pos_embed=(1, 17, 16))).mismatched  # another width is not


def test_backbone_mismatch_is_an_error_naming_counts_and_first_keys():
    model = {f'backbone.layers.{i}.w': torch.zeros(4) for i in range(8)}
    model['head.w'] = torch.zeros(2)
    ckpt = {'foo.weight': torch.zeros(1)}
    with pytest.raises(StartWeightsError) as err:
        check_start_weights(model, ckpt, source='wrong.pth')
    msg = str(err.value)
    assert '8 of 8 keys missing from wrong.pth' in msg
    assert 'layers.0.w' in msg and 'layers.4.w' in msg and 'layers.5.w' not in msg
    assert '(3 more)' in msg and 'strict=False' in msg


def test_outside_the_backbone_and_non_strict_differences_are_only_logged(tmp_path):
    log = tmp_path / 'run.log'
    MMLogger.get_instance('start_weights_test', log_file=str(log), log_level=logging.INFO)
    model = {'backbone.w': torch.zeros(4), 'head.w': torch.zeros(2)}
    report = check_start_weights(model, {'backbone.w': torch.ones(4)}, source='dino.pth',
                                 logger='start_weights_test')
    assert report.matched == ['w'] and not report.missing
    report = check_start_weights(model, {'backbone.w': torch.ones(5)}, source='vit_s.pth',
                                 strict=False, logger='start_weights_test')
    assert report.mismatched == [('w', (5, ), (4, ))]
    text = log.read_text()  # the report reaches the run's log file, not only the console
    assert ('start weights dino.pth: backbone 1/1 keys loaded; not in the checkpoint, initialised '
            'by the model: head (1)') in text
    assert 'keys missing' not in text  # the heads a start lacks are expected: no warning
    assert '1 of 1 keys shaped differently in vit_s.pth: w (checkpoint [5] vs model [4])' in text


def test_summary_groups_the_new_modules_and_keeps_every_key_at_debug(tmp_path):
    log = tmp_path / 'debug.log'
    MMLogger.get_instance('start_weights_debug', log_file=str(log), log_level=logging.DEBUG)
    model = {'backbone.a': torch.zeros(1), 'backbone.b': torch.zeros(1), 'neck.p': torch.zeros(1),
             'teacher.backbone.a': torch.zeros(1), 'teacher.backbone.b': torch.zeros(1),
             'teacher.neck.p': torch.zeros(1), 'loss_iter': torch.zeros(())}
    ckpt = {'backbone.a': torch.ones(1), 'backbone.b': torch.ones(1), 'extra.w': torch.ones(1)}
    check_start_weights(model, ckpt, source='s.pth', what='load_from', logger='start_weights_debug')
    lines = log.read_text().splitlines()
    info = [l for l in lines if 'INFO' in l]
    assert len(info) == 1 and info[0].endswith(
        'load_from s.pth: backbone 2/2 keys loaded; not in the checkpoint, initialised by the '
        'model: teacher (3), neck (1), buffers (1)')
    warn = [l for l in lines if 'WARNING' in l]
    assert len(warn) == 1 and '1 keys of s.pth not in the model (ignored): extra.w' in warn[0]
    debug = '\n'.join(l for l in lines if 'DEBUG' in l)
    for key in ('teacher.backbone.a', 'teacher.backbone.b', 'teacher.neck.p', 'neck.p', 'extra.w'):
        assert repr(key) in debug


def test_quiet_mmengine_load_leaves_the_model_as_mmengine_would():
    from mmengine.runner.checkpoint import _load_checkpoint_to_model
    from torch import nn
    torch.manual_seed(0)
    model = nn.ModuleDict(dict(backbone=nn.Linear(2, 3), head=nn.Linear(3, 1),
                               neck=nn.Linear(3, 3),
                               teacher=nn.ModuleDict(dict(backbone=nn.Linear(2, 3),
                                                          head=nn.Linear(3, 1)))))
    model.register_buffer('bank', torch.zeros(2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = {'state_dict': {'module.backbone.weight': torch.ones(3, 2),
                           'module.backbone.bias': torch.ones(3), 'junk': torch.ones(1),
                           'neck.weight': torch.ones(3, 3), 'teacher.backbone.weight': torch.ones(3, 2),
                           'bank.queue': torch.ones(2)}}
    quiet_mmengine_load(ckpt['state_dict'], model.state_dict())
    # head, teacher.head: nothing of them in the file -> the model's own tensors; neck and
    # teacher.backbone (partly there) and bank (an older layout under its name) untouched;
    # nothing removed
    assert set(ckpt['state_dict']) == {
        'module.backbone.weight', 'module.backbone.bias', 'junk', 'neck.weight', 'bank.queue',
        'teacher.backbone.weight', 'head.weight', 'head.bias', 'teacher.head.weight',
        'teacher.head.bias'}
    _load_checkpoint_to_model(model, ckpt, strict=False)
    assert torch.equal(model.backbone.weight, torch.ones(3, 2))
    assert torch.equal(model.neck.weight, torch.ones(3, 3))
    assert torch.equal(model.neck.bias, before['neck.bias'])
    for key in ('head.weight', 'head.bias', 'teacher.head.weight', 'teacher.head.bias', 'bank'):
        assert torch.equal(model.state_dict()[key], before[key])

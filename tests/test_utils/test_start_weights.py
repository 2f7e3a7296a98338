"""Strict start weights: what differs, and when it is an error."""
import logging

import pytest
import torch
from mmengine.logging import MMLogger

from cotap_mm.utils.start_weights import (StartWeightsError, check_start_weights,
                                          compare_state_dicts)


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
    assert 'start weights (outside backbone.*): 1 of 1 keys missing from dino.pth: head.w' in text
    assert 'all 1 keys loaded from dino.pth' in text
    assert '1 of 1 keys shaped differently in vit_s.pth: w (checkpoint [5] vs model [4])' in text

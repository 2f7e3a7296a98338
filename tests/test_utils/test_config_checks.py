"""Config mistakes refused at build: negative loss weights, unknown hook keys."""
import pytest
import torch.nn as nn
from mmengine.config import Config
from mmpretrain.registry import HOOKS, MODELS

import cotap_mm  # noqa: F401
from cotap_mm.utils.config_checks import (check_known_keys, check_loss_weights,
                                          negative_loss_weights)
from cotap_test_helpers.tiny_runs import REPO_ROOT

DINO_TINY = f'{REPO_ROOT}/configs/dino/dino_vit-tiny-p8_1xb8-1500it_synthetic.py'


class _Loss(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.loss_weight = w


def test_negative_loss_weights_are_found_by_module_path():
    model = nn.ModuleDict(dict(a=_Loss(1.0), b=_Loss(-0.5), c=_Loss(None), d=_Loss(0)))
    assert negative_loss_weights(model) == [('b', -0.5)]
    with pytest.raises(ValueError, match=r'b\.loss_weight=-0\.5'):
        check_loss_weights(model)
    check_loss_weights(nn.ModuleDict(dict(a=_Loss(0.0))))


def test_algorithm_with_a_negative_loss_weight_is_refused_at_build():
    cfg = Config.fromfile(DINO_TINY).model
    cfg.dino_loss.loss_weight = -1.0
    with pytest.raises(ValueError, match=r'dino_loss\.loss_weight=-1\.0'):
        MODELS.build(cfg)


def test_unknown_keys_name_the_key_and_a_suggestion():
    with pytest.raises(TypeError, match=r"'intervl' \(did you mean 'interval'\?\)"):
        check_known_keys('X', ['intervl'], ['interval', 'by_epoch'])
    check_known_keys('X', ['interval'], ['interval'])


@pytest.mark.parametrize('cfg, key', [
    (dict(type='AtomicCheckpointHook', intervl=10), 'intervl'),
    (dict(type='EMATeacherHook', momentun=0.99), 'momentun'),
    (dict(type='DivergenceHook', max_skiped_steps=2), 'max_skiped_steps'),
    (dict(type='StartWeightsHook', strickt=False), 'strickt'),
    (dict(type='ResumeHook', restore=False), 'restore'),
    (dict(type='CollapseMonitorHook', intervall=3), 'intervall'),
])
def test_our_hooks_refuse_unknown_keys_when_built(cfg, key):
    with pytest.raises(TypeError, match=key):
        HOOKS.build(cfg)

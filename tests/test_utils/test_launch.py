import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.optim import OptimWrapper, build_optim_wrapper

from cotap_mm.utils.launch import adapt_cfg_for_launcher, amp_to_fp32_on_cpu


def _amp_cfg() -> Config:
    return Config(dict(optim_wrapper=dict(type='AmpOptimWrapper', loss_scale='dynamic',
                                          optimizer=dict(type='AdamW', lr=3e-5),
                                          clip_grad=dict(max_norm=3.0))))


def test_amp_becomes_fp32_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = adapt_cfg_for_launcher(_amp_cfg(), 'none')
    ow = cfg.optim_wrapper
    assert ow.type == 'OptimWrapper' and 'loss_scale' not in ow
    assert ow.optimizer.lr == 3e-5 and ow.clip_grad.max_norm == 3.0  # the rest is kept
    wrapper = build_optim_wrapper(nn.Linear(2, 2), ow)
    assert type(wrapper) is OptimWrapper


def test_amp_kept_with_cuda_and_other_wrappers_untouched(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert amp_to_fp32_on_cpu(_amp_cfg()).optim_wrapper.type == 'AmpOptimWrapper'
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1))))
    assert amp_to_fp32_on_cpu(cfg).optim_wrapper == cfg.optim_wrapper
    assert amp_to_fp32_on_cpu(Config(dict())).get('optim_wrapper') is None


def test_bad_launcher_named():
    with pytest.raises(ValueError, match='launcher'):
        adapt_cfg_for_launcher(_amp_cfg(), 'ssh')

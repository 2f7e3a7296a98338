"""Tests of DINO (cotap_mm/models/algorithms/dino.py): SCFS's DINO term without the stages."""
import math
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

import cotap_mm  # noqa: F401  (registers DINO, DINOProjectionHead, DINOClsLoss, ...)
from cotap_mm.models.algorithms.base import paired_tensors
from cotap_mm.evaluation.linear_probe import last_layer_output
from cotap_test_helpers.tool_runs import logged_loss_rows, train_in_process
from cotap_test_helpers.view_batches import independent_view_batch
from mmengine.config import Config
from mmpretrain.registry import MODELS

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
CFG = osp.join(REPO, 'configs/dino/dino_vit-tiny-p8_1xb8-1500it_synthetic.py')


def _build(perturb_teacher=False, **overrides):
    cfg = Config.fromfile(CFG)
    cfg.model.update(overrides)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    if perturb_teacher:
        with torch.no_grad():
            for p in model.teacher.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return model


_batch = independent_view_batch


def _cls(backbone, x):
    return last_layer_output(backbone, x, 'cls_token')


def test_structure():
    model = _build()
    keys = list(model.state_dict())
    assert not any('stage_heads' in k for k in keys)
    assert any(k.startswith('teacher.head.') for k in keys) and 'teacher_initialized' in keys
    assert len(model.stage_heads) == 0 and not hasattr(model, 'search_losses')
    paired_tensors(model.teacher, model.get_submodule('student'))
    feats = model.extract_feat(torch.randn(2, 3, 64, 64))
    assert len(feats) == 1 and feats[0].shape == (2, 96, 8, 8)


@pytest.mark.parametrize('L', [2, 0])
def test_loss_against_reference_and_gradients(L):
    """Only loss_dino: H(teacher global t, student crop s) over s != t, recomputed by hand."""
    model = _build(perturb_teacher=True).eval()
    inputs, samples = _batch(L=L, seed=3)
    G = 2
    with torch.no_grad():
        losses = model.loss(inputs, samples)
        assert set(losses) == {'loss_dino'}
        t_temp = model.dino_loss.current_teacher_temp()
        s_log = [model.head(_cls(model.backbone, v)) for v in inputs[:G + L]]
        t_log = [model.teacher['head'](_cls(model.teacher['backbone'], v)) for v in inputs[:G]]
        terms = [-(F.softmax(t_log[t] / t_temp, -1) * F.log_softmax(s_log[s] / 0.1, -1)).sum(-1)
                 .mean() for t in range(G) for s in range(G + L) if s != t]
    torch.testing.assert_close(losses['loss_dino'], torch.stack(terms).mean())

    model.train()
    model.loss(inputs, samples)['loss_dino'].backward()
    assert next(model.backbone.parameters()).grad.abs().sum() > 0
    assert model.head.weight_v.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.dino_loss.center.abs().sum() > 0


def test_scfs_without_stages_is_refused_and_extends_dino():
    from cotap_mm.models.algorithms import DINO, SCFS
    assert issubclass(SCFS, DINO)
    cfg = Config.fromfile(CFG).model
    kw = dict(backbone=cfg.backbone, head=cfg.head, dino_feature='cls')
    with pytest.raises(ValueError, match="type='DINO'"):
        SCFS(stage_head=None, stage_channels=(96, ), **kw)
    with pytest.raises(ValueError, match='stage_channels'):
        SCFS(stage_head=dict(type='SCFSHead'), stage_channels=(), **kw)


def test_trains_with_tools_train(tmp_path):
    train_in_process([
        CFG, '--work-dir', str(tmp_path), '--cfg-options', 'train_cfg.max_iters=2',
        'default_hooks.logger.interval=1', 'train_dataloader.batch_size=2',
        'train_dataloader.dataset.num_samples=4', 'default_hooks.checkpoint.interval=2'
    ])
    rows = logged_loss_rows(tmp_path)
    assert len(rows) == 2 and all(math.isfinite(r['loss_dino']) for r in rows)
    # DINO's collapse diagnostics are logged beside the loss, and not added to it
    for r in rows:
        assert 0 <= r['dino_teacher_entropy'] <= math.log(32) + 1e-4
        assert 0 <= r['dino_teacher_marginal_entropy'] <= math.log(32) + 1e-4
        assert r['dino_kl'] >= 0 and r['loss'] == pytest.approx(r['loss_dino'], rel=1e-4)
    sd = torch.load(str(tmp_path / 'iter_2.pth'), map_location='cpu',
                    weights_only=False)['state_dict']
    assert bool(sd['teacher_initialized'])
    name = 'head.mlp.0.weight'
    assert not torch.equal(sd['teacher.' + name], sd[name])  # EMA: the teacher lags the student

"""Tests of the SCFS algorithm (cotap_mm/models/algorithms/scfs.py)."""
import math
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

import cotap_mm  # noqa: F401  (registers SCFS, SCFSHead, DINOProjectionHead, DINOClsLoss, ...)
from cotap_mm.models.algorithms.base import paired_tensors
from cotap_test_helpers.tool_runs import logged_loss_rows, train_in_process
from cotap_test_helpers.view_batches import independent_view_batch
from mmengine.config import Config
from mmpretrain.registry import MODELS

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
VIT = osp.join(REPO, 'configs/scfs/scfs_vit-tiny-p8_1xb8-300it_synthetic.py')
RES = osp.join(REPO, 'configs/scfs/scfs_resnet18_1xb8-300it_synthetic.py')


def _build(path=RES, perturb_teacher=False, **overrides):
    cfg = Config.fromfile(path)
    cfg.model.update(overrides)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    if perturb_teacher:  # teacher != student, so that the roles are distinguishable
        with torch.no_grad():
            for p in model.teacher.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return model


_batch = independent_view_batch  # teacher copies drawn apart from the student views


def _ce(t_logits, s_logits, t_temp, s_temp, center=0.0):
    t_prob = F.softmax((t_logits - center) / t_temp, -1)
    return -(t_prob * F.log_softmax(s_logits / s_temp, -1)).sum(-1)


@pytest.mark.parametrize('path', [RES, VIT])
def test_structure_and_ema_contract(path):
    model = _build(path)
    keys = list(model.state_dict())
    assert any(k.startswith('backbone.') for k in keys)
    assert any(k.startswith('teacher.stage_heads.2.') for k in keys)
    assert any(k.startswith('teacher.head.') for k in keys)
    assert not any(k.startswith('student.') for k in keys)
    assert 'teacher_initialized' in keys
    assert all(not p.requires_grad for p in model.teacher.parameters())
    student = model.get_submodule('student')
    assert student['stage_heads'] is model.stage_heads
    paired_tensors(model.teacher, student)
    for (_, p), (_, q) in zip(student.named_parameters(), model.teacher.named_parameters()):
        torch.testing.assert_close(p, q)
    # one centre per stage loss
    assert len(model.stage_global_losses) == len(model.search_losses) == 3
    assert model.stage_global_losses[0].center is not model.stage_global_losses[1].center
    feats = model.extract_feat(torch.randn(2, 3, 64, 64))
    assert [f.shape[1] for f in feats] == list(model.stage_channels)


def test_vit_stage_maps_match_backbone_featmaps():
    """The block-by-block ViT path ('cls') gives the backbone's own out_type='featmap' maps."""
    model = _build(VIT).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.extract_feat(x)
        ref = model.backbone(x)
    assert len(ours) == len(ref) == 3
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)
    assert ours[0].shape == (2, 96, 8, 8)


@pytest.mark.parametrize('path', [RES, VIT])
def test_losses_finite_and_gradients(path):
    model = _build(path).train()
    inputs, samples = _batch()
    losses = model.loss(inputs, samples)
    expected = {'loss_dino'} | {f'loss_{k}_{i}' for k in ('global', 'search') for i in range(3)}
    logged = {'dino_teacher_entropy', 'dino_teacher_marginal_entropy', 'dino_kl'}
    assert set(losses) == expected | logged
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert not any(losses[k].requires_grad for k in logged)
    losses = {k: v for k, v in losses.items() if k in expected}

    model.zero_grad()
    losses['loss_search_0'].backward()
    first = next(model.backbone.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert model.stage_heads[0].mlp[0].weight.grad.abs().sum() > 0
    assert model.stage_heads[1].mlp[0].weight.grad is None  # other stages untouched
    assert all(p.grad is None for p in model.teacher.parameters())

    model.zero_grad()
    losses = model.loss(inputs, samples)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert model.head.weight_v.grad.abs().sum() > 0
    assert all(h.bottleneck[0].conv.weight.grad.abs().sum() > 0 for h in model.stage_heads)
    assert all(p.grad is None for p in model.teacher.parameters())
    # centres of the centred terms moved, the search centre stayed at 0 (official: not centred)
    assert model.dino_loss.center.abs().sum() > 0
    assert model.stage_global_losses[0].center.abs().sum() > 0
    assert model.search_losses[0].center.abs().sum() == 0


def _brute_search(q, key):
    """Cosine of q [C] with every position of key [C, h, w] by a loop, times key."""
    C, h, w = key.shape
    out = torch.zeros_like(key)
    for i in range(h):
        for j in range(w):
            k = key[:, i, j]
            out[:, i, j] = key[:, i, j] * (q @ k) / (q.norm() * k.norm())
    return out


def test_loss_values_against_reference():
    """Eval mode (BN running stats, no centre update): recompute every term of one stage."""
    model = _build(RES, perturb_teacher=True).eval()
    inputs, samples = _batch(B=2, G=2, L=2, seed=3)
    G, L, B = 2, 2, 2
    with torch.no_grad():
        losses = model.loss(inputs, samples)
        s_temp = 0.1
        t_temp = model.dino_loss.current_teacher_temp()
        assert t_temp == pytest.approx(0.04)  # warm-up start
        s_out = [model.backbone(v) for v in inputs[:G + L]]
        t_out = [model.teacher['backbone'](v) for v in inputs[:G]]  # teacher_input='student'

        # DINO term: GAP of the last stage, every (teacher global, other student crop) pair
        s_log = [model.head(o[-1].mean((2, 3))) for o in s_out]
        t_log = [model.teacher['head'](o[-1].mean((2, 3))) for o in t_out]
        terms = [_ce(t_log[t], s_log[s], t_temp, s_temp).mean()
                 for t in range(G) for s in range(G + L) if s != t]
        torch.testing.assert_close(losses['loss_dino'], torch.stack(terms).mean())

        for i in range(3):
            s_head, t_head = model.stage_heads[i], model.teacher['stage_heads'][i]
            # global term: 0.5 * 1/2 [H(t_g1, s_g2) + H(t_g2, s_g1)], centre 0 at the start
            zs = [s_head(s_out[g][i]) for g in range(G)]
            zt = [t_head(t_out[g][i]) for g in range(G)]
            ref = 0.5 * 0.5 * (_ce(zt[0], zs[1], t_temp, s_temp).mean()
                               + _ce(zt[1], zs[0], t_temp, s_temp).mean())
            torch.testing.assert_close(losses[f'loss_global_{i}'], ref)
            # search term: query = student local crop, keys = teacher first global crop
            total = 0.0
            for l in range(L):
                for b in range(B):
                    s_map = s_out[G + l][i][b]
                    searched = _brute_search(s_map.mean((1, 2)), t_out[0][i][b])
                    total = total + _ce(t_head(searched[None]), s_head(s_map[None]), t_temp,
                                        s_temp).sum()
            torch.testing.assert_close(losses[f'loss_search_{i}'], 0.5 * total / (L * B),
                                       rtol=1e-4, atol=1e-5)


def test_teacher_input_and_search_view():
    inputs, samples = _batch(seed=1)
    changed = list(inputs[:4]) + [torch.randn_like(v) for v in inputs[4:]]
    model = _build(RES).eval()
    with torch.no_grad():
        a, b = model.loss(inputs, samples), model.loss(changed, samples)
    assert all(torch.equal(a[k], b[k]) for k in a)  # 'student': packed teacher copies unused
    model = _build(RES, teacher_input='clean').eval()
    with torch.no_grad():
        a, b = model.loss(inputs, samples), model.loss(changed, samples)
    assert not torch.allclose(a['loss_search_0'], b['loss_search_0'])
    model = _build(RES, search_view=1).eval()
    with torch.no_grad():
        c = model.loss(inputs, samples)
    ref = _build(RES).eval()
    with torch.no_grad():
        d = ref.loss(inputs, samples)
    assert torch.equal(c['loss_global_0'], d['loss_global_0'])
    assert not torch.allclose(c['loss_search_0'], d['loss_search_0'])


def test_freeze_last_layer():
    model = _build(RES, freeze_last_layer_iters=1).train()
    inputs, samples = _batch()
    sum(model.loss(inputs, samples).values()).backward()
    assert model.head.weight_v.grad is None and model.head.mlp[0].weight.grad is not None
    model.zero_grad()
    sum(model.loss(inputs, samples).values()).backward()
    assert model.head.weight_v.grad is not None
    assert int(model.num_iters) == 2


def test_bad_inputs():
    model = _build(RES)
    inputs, samples = _batch(L=0)
    with pytest.raises(ValueError, match='local crop'):
        model.loss(inputs, samples)
    inputs, samples = _batch()
    with pytest.raises(ValueError, match='V \\+ T'):
        model.loss(inputs[:-1], samples)
    with pytest.raises(ValueError, match='search_view'):
        _build(RES, search_view=2).loss(inputs, samples)
    with pytest.raises(ValueError, match='stage_channels'):
        _build(RES, stage_channels=(128, 0, 512))
    with pytest.raises(ValueError, match='stage_channels'):
        _build(RES, stage_channels=(128, 256, 1024)).loss(inputs, samples)
    with pytest.raises(ValueError, match='feature maps'):
        _build(RES, stage_channels=(128, 256)).loss(inputs, samples)
    with pytest.raises(ValueError, match="dino_feature='cls'"):
        _build(RES, dino_feature='cls')
    with pytest.raises(ValueError, match='CLS token'):
        _build(VIT, backbone=dict(with_cls_token=False, out_type='featmap'))
    with pytest.raises(ValueError, match='search_cfg'):
        _build(RES, search_cfg=dict(weighting='topk'))
    with pytest.raises(ValueError, match='teacher_input'):
        _build(RES, teacher_input='both')


@pytest.mark.parametrize('path', [VIT, RES])
def test_trains_with_tools_train(tmp_path, path):
    train_in_process([
        path, '--work-dir', str(tmp_path), '--cfg-options', 'train_cfg.max_iters=2',
        'default_hooks.logger.interval=1', 'train_dataloader.batch_size=2',
        'train_dataloader.dataset.num_samples=4', 'default_hooks.checkpoint.interval=2'
    ])
    rows = logged_loss_rows(tmp_path)
    assert len(rows) == 2
    keys = ['loss', 'loss_dino'] + [f'loss_{k}_{i}' for k in ('global', 'search') for i in range(3)]
    for r in rows:
        for key in keys:
            assert math.isfinite(r[key]), (key, r)
    ckpt = torch.load(str(tmp_path / 'iter_2.pth'), map_location='cpu', weights_only=False)
    sd = ckpt['state_dict']
    assert bool(sd['teacher_initialized'])
    name = 'stage_heads.0.mlp.0.weight'
    assert not torch.equal(sd['teacher.' + name], sd[name])  # EMA: teacher lags the student

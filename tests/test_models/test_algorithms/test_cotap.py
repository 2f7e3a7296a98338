import glob
import importlib.util
import json
import math
import os.path as osp

import pytest
import torch

import cotap_mm  # noqa: F401
import cotap_mm.models.algorithms.cotap  # noqa: F401  (registers CoTAP)
import cotap_mm.models.heads.dino_projection_head  # noqa: F401
import cotap_mm.models.losses.dino_cls_loss  # noqa: F401  (registers DINOClsLoss)
from cotap_mm.engine.hooks.ema_teacher_hook import check_teacher_student
from mmengine.config import Config
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
TINY = osp.join(REPO, 'configs/cotap/cotap_vit-tiny-p8_1xb8-demo_synthetic.py')


def _build(init_weights=False, **overrides):
    cfg = Config.fromfile(TINY)
    cfg.model.update(overrides)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    if init_weights:
        model.init_weights()
    return model


def _batch(B=4, G=2, L=2, size=64, local=32, seed=0, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    teacher = [torch.randn(B, 3, size, size, generator=g) for _ in range(G)]
    student = [t + noise * torch.randn(t.shape, generator=g) for t in teacher]
    student += [torch.randn(B, 3, local, local, generator=g) for _ in range(L)]
    samples = []
    for _ in range(B):
        ds = DataSample()
        ds.set_metainfo(dict(num_student_views=G + L, num_teacher_views=G, num_global_crops=G,
                             num_local_crops=L))
        ds.set_field(torch.arange(G), 'teacher_view_indices')
        samples.append(ds)
    return student + teacher, samples


def test_builds_structure_and_state_dict():
    model = _build(init_weights=True)
    assert type(model).__name__ == 'CoTAP'
    keys = list(model.state_dict())
    assert any(k.startswith('backbone.') for k in keys)
    assert any(k.startswith('teacher.backbone.') for k in keys)
    assert not any(k.startswith('student.') for k in keys)  # no duplicated student keys
    assert 'teacher_initialized' in keys and 'proto_bank' in keys
    assert all(not p.requires_grad for p in model.teacher.parameters())
    # the EMA hook's view of the student
    student = model.get_submodule('student')
    assert student['backbone'] is model.backbone
    check_teacher_student(model.teacher, student)
    for name in model._ddp_params_and_buffers_to_ignore:
        assert name in dict(model.named_buffers())
    # teacher starts equal to the student
    for (n, p), (_, q) in zip(student.named_parameters(), model.teacher.named_parameters()):
        torch.testing.assert_close(p, q)


def test_loss_finite_and_gradients():
    model = _build()
    inputs, samples = _batch()
    losses = model.loss(inputs, samples)
    assert set(losses) == {'loss_cotap', 'loss_cls', 'loss_proto_entropy'}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())

    # cotap + cls terms: reach the backbone and heads, not the teacher, not the prototypes
    model.zero_grad()
    (losses['loss_cotap'] + losses['loss_cls']).backward()
    assert model.backbone.layers[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.backbone.layers[-1].ffn.layers[0][0].weight.grad.abs().sum() > 0
    assert model.patch_head.weight_v.grad.abs().sum() > 0
    assert model.cls_head.weight_v.grad.abs().sum() > 0
    assert model.neck.prototypes.grad is None
    assert all(p.grad is None for p in model.teacher.parameters())

    # each term alone reaches the backbone
    for key in ('loss_cotap', 'loss_cls'):
        model.zero_grad()
        model.loss(inputs, samples)[key].backward()
        assert model.backbone.layers[0].attn.qkv.weight.grad.abs().sum() > 0, key
        assert model.neck.prototypes.grad is None, key


def test_prototype_bank_init_and_entropy():
    # bank of 16 = the tiny neck's 16 prototypes; 2 x 4 global crops -> 8 samples a step
    model = _build(bank_size=16, bank_samples_per_step=16, kmeans_iters=20)
    inputs, samples = _batch()
    for step in range(2):
        losses = model.loss(inputs, samples)
        assert not bool(model.neck.prototypes_initialized)
        assert losses['loss_proto_entropy'].item() == 0.0
    assert int(model.proto_bank_count) == 16 and int(model.proto_bank_ptr) == 0
    before = model.teacher['neck'].prototypes.clone()
    losses = model.loss(inputs, samples)
    assert bool(model.neck.prototypes_initialized)
    assert bool(model.teacher['neck'].prototypes_initialized)
    torch.testing.assert_close(model.teacher['neck'].prototypes, model.neck.prototypes)
    assert not torch.allclose(before, model.neck.prototypes)
    ent = losses['loss_proto_entropy']
    assert torch.isfinite(ent) and 0 < ent.item() <= math.log(16) + 1e-4
    model.zero_grad()
    ent.backward()
    assert model.neck.prototypes.grad.abs().sum() > 0
    assert model.backbone.layers[0].attn.qkv.weight.grad is None  # bank is detached


def test_disabled_terms_and_partner_field():
    model = _build(cls_loss=None, proto_loss=dict(type='PrototypeEntropyLoss', loss_weight=0.))
    inputs, samples = _batch()
    assert set(model.loss(inputs, samples)) == {'loss_cotap'}
    for i, ds in enumerate(samples):
        ds.set_field((i + 1) % len(samples), 'neighbor_index')
    assert torch.isfinite(model.loss(inputs, samples)['loss_cotap'])
    samples[0].set_field(0, 'neighbor_index')  # itself
    with pytest.raises(ValueError, match='neighbor_index'):
        model.loss(inputs, samples)


def test_bad_inputs():
    model = _build()
    inputs, samples = _batch()
    with pytest.raises(ValueError, match='V \\+ T'):
        model.loss(inputs[:-1], samples)
    with pytest.raises(ValueError, match='pool_scales'):
        _build(pool_scales=(4, 16)).loss(inputs, samples)
    with pytest.raises(ValueError, match='bank_size'):
        _build(bank_size=8)


def test_extract_feat():
    model = _build()
    feat = model.extract_feat(torch.randn(2, 3, 64, 64))
    assert feat.shape == (2, 2 * 96, 8, 8)
    assert model.extract_feat([torch.randn(1, 3, 32, 32)]).shape == (1, 192, 4, 4)


def test_cotap_loss_decreases_on_fixed_batch():
    model = _build(cls_loss=None, proto_loss=None)
    inputs, samples = _batch(L=0, seed=1, noise=0.5)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    torch.manual_seed(0)  # the random derangements
    values = []
    for _ in range(12):
        torch.manual_seed(0)  # same random items every step
        loss = model.loss(inputs, samples)['loss_cotap']
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(loss.item())
    assert all(math.isfinite(v) for v in values)
    assert sum(values[-3:]) / 3 < 0.8 * values[0], values


def test_tiny_config_trains_with_tools_train(tmp_path):
    spec = importlib.util.spec_from_file_location('cotap_tools_train', osp.join(REPO, 'tools/train.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main([
        TINY, '--work-dir', str(tmp_path), '--cfg-options', 'train_cfg.max_iters=4',
        'default_hooks.logger.interval=1', 'train_dataloader.batch_size=4',
        'model.bank_size=16', 'model.bank_samples_per_step=8'
    ])
    scalars = glob.glob(str(tmp_path / '*' / 'vis_data' / 'scalars.json'))
    assert scalars
    rows = [json.loads(line) for line in open(scalars[0])]
    rows = [r for r in rows if 'loss' in r]
    assert len(rows) == 4
    for r in rows:
        for key in ('loss', 'loss_cotap', 'loss_cls', 'loss_proto_entropy'):
            assert math.isfinite(r[key]), (key, r)
    ckpt = torch.load(str(tmp_path / 'iter_4.pth'), map_location='cpu', weights_only=False)
    sd = ckpt['state_dict']
    assert bool(sd['teacher_initialized']) and bool(sd['neck.prototypes_initialized'])
    # the EMA hook moved the teacher away from the (initial) student copy but not onto it
    assert not torch.equal(sd['teacher.backbone.layers.0.attn.qkv.weight'],
                           sd['backbone.layers.0.attn.qkv.weight'])

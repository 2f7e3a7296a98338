import math
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

import cotap_mm  # noqa: F401  (registers DDSSLiBOT, IBOTPatchLoss, RegionCollaborativeCutout)
from cotap_mm.datasets.transforms.region_cutout import region_cutout_mask
from cotap_mm.models.algorithms.base import paired_tensors
from cotap_mm.models.losses.ibot_patch_loss import ibot_patch_cross_entropy
from cotap_test_helpers.tool_runs import logged_loss_rows, train_in_process

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
TINY = osp.join(REPO, 'configs/ddssl/ddssl-ibot_vit-tiny-p8_1xb8-300it_synthetic.py')
TINY_DP = osp.join(REPO, 'configs/ddssl/ddssl-ibot-dp_vit-tiny-p8_1xb8-300it_synthetic.py')
COCO = osp.join(REPO, 'configs/ddssl/ddssl-ibot_vit-small-p16_8xb64-800e_coco.py')
COCO_BASE = osp.join(REPO, 'configs/ddssl/ibot_vit-small-p16_8xb64-800e_coco.py')


def _build(cfg_path=TINY_DP, **overrides):
    cfg = Config.fromfile(cfg_path)
    cfg.model.backbone.arch = dict(embed_dims=48, num_layers=2, num_heads=3,
                                   feedforward_channels=96)
    cfg.model.cls_head.update(hidden_channels=64, bottleneck_channels=32, num_prototypes=64)
    cfg.model.update(overrides)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    return model


def _batch(B=8, G=2, size=64, grid=8, ratio=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(B, 3, size, size, generator=g) for _ in range(G)]
    rng = np.random.RandomState(seed)
    samples = []
    for _ in range(B):
        ds = DataSample()
        ds.set_field(np.stack([region_cutout_mask(grid, rng, ratio=ratio) for _ in range(G)]),
                     'rcc_mask')
        samples.append(ds)
    return views, samples


def test_structure_teacher_and_state_dict():
    model = _build()
    paired_tensors(model.teacher, model.student)
    assert set(model.student.keys()) == {'backbone', 'cls_head'}  # shared head
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert not model.teacher.training and model.training  # teacher always in eval mode
    sd = model.state_dict()
    assert 'backbone.pos_embed' in sd and 'teacher.backbone.pos_embed' in sd
    assert 'mask_token' in sd and not any(k.startswith('teacher.mask_token') for k in sd)
    assert sd['teacher_initialized'].dtype == torch.bool
    sep = _build(patch_head=dict(type='DINOProjectionHead', hidden_channels=64,
                                 bottleneck_channels=32, num_prototypes=40))
    assert set(sep.student.keys()) == {'backbone', 'cls_head', 'patch_head'}
    assert sep.patch_loss.out_dim == 40 and sep.cls_loss.out_dim == 64


def test_loss_terms_finite_with_gradients():
    model = _build()
    views, samples = _batch()
    losses = model.loss(views, samples)
    logged = {'cls_teacher_entropy', 'cls_teacher_marginal_entropy', 'cls_kl'}
    assert set(losses) == {'loss_cls', 'loss_patch', 'loss_dc', 'loss_depos'} | logged
    for k, v in losses.items():
        assert v.dim() == 0 and math.isfinite(v.item()), k
    assert not any(losses[k].requires_grad for k in logged)  # logged, not optimised
    assert losses['loss_dc'].item() > 0 and losses['loss_depos'].item() > 0
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    assert model.backbone.patch_embed.projection.weight.grad.abs().sum() > 0
    assert model.cls_head.weight_v.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())
    # the patch centre moved once (the dc / depos terms do not update it)
    assert int(model.patch_loss.num_updates) == 1 and int(model.cls_loss.num_updates) == 1


def test_decoupling_rows_skip_the_cls_loss_and_use_kept_tokens():
    model = _build(depositioning=None)
    seen = {}
    orig_cls, orig_ce = model.cls_loss.forward, model.patch_loss.cross_entropy

    def cls_spy(s, t, *a, **k):
        seen['cls'] = (tuple(s.shape), tuple(t.shape))
        return orig_cls(s, t, *a, **k)

    def ce_spy(s, t, w):  # first call: the de-coupling term (then the iBOT patch term)
        seen.setdefault('dc', (s.detach().clone(), t.detach().clone(), w.clone()))
        return orig_ce(s, t, w)

    model.cls_loss.forward = cls_spy
    model.patch_loss.cross_entropy = ce_spy
    views, samples = _batch(B=8)
    losses = model.loss(views, samples)
    assert 'loss_depos' not in losses
    assert seen['cls'] == ((2, 8, 64), (2, 8, 64))  # only the 2 x 8 normal samples
    s, t, keep = seen['dc']
    assert s.shape == (2, 2, 64, 64) and keep.shape == (2, 2, 64)  # E = 2 extra rows per view
    masks = torch.stack([torch.as_tensor(np.asarray(d.rcc_mask)) for d in samples], 1)
    pool = [m for m in masks.reshape(16, 64) if m.any()]
    # kept tokens of the first extra row of view 0: complement of its (replaced) cut region
    assert torch.equal(keep[0, 0], ~pool[0]) and torch.equal(keep[0, 1], pool[1])
    # teacher targets: clean-view teacher outputs of the last two images
    with torch.no_grad():
        tok = model.teacher['backbone'].forward_tokens(views[0][6:8], final_norm=True).tokens
        ref = model.teacher['cls_head'](tok[:, 1:])
    assert torch.allclose(t[0], ref, atol=1e-5)
    # computed before this step's centre update: zero centre, warm-up teacher temperature 0.04
    ref_dc = 0.3 * ibot_patch_cross_entropy(s, t, torch.zeros(64), keep, 0.1, 0.04)
    assert math.isclose(losses['loss_dc'].item(), ref_dc.item(), rel_tol=1e-5)
    assert int(model.patch_loss.num_updates) == 1

    no_dc = _build(decoupling=None, depositioning=None)
    assert set(no_dc.loss(views, samples)) == {'loss_cls', 'loss_patch', 'cls_teacher_entropy',
                                               'cls_teacher_marginal_entropy', 'cls_kl'}


def test_student_rows_match_edited_forward():
    """Normal rows see the mask token at masked positions only; with empty masks the student
    equals the teacher (same weights, eval mode)."""
    model = _build(decoupling=None, depositioning=None)
    model.eval()
    views, samples = _batch(ratio=0.0)
    with torch.no_grad():
        s = model.extract_feat(views[0])
        tok = model.teacher['backbone'].forward_tokens(views[0], final_norm=True).tokens
    assert s.shape == (8, 48, 8, 8)
    assert torch.allclose(s, tok[:, 1:].transpose(1, 2).reshape(8, 48, 8, 8), atol=1e-5)
    losses = model.loss(views, samples)
    assert losses['loss_patch'].item() == 0.0  # no masked token: iBOT's patch loss is 0


def test_bad_inputs():
    model = _build()
    views, samples = _batch()
    bare = [DataSample() for _ in range(8)]
    with pytest.raises(KeyError, match='rcc_mask'):
        model.loss(views, bare)
    _, wrong = _batch(grid=4)
    with pytest.raises(ValueError, match='patch grid'):
        model.loss(views, wrong)
    with pytest.raises(ValueError, match='num_global_crops'):
        _build(num_global_crops=0)
    with pytest.raises(TypeError, match='list of view batches'):
        model.loss(views[0], samples)


def test_configs_parse_and_hold_the_recipe():
    cfg = Config.fromfile(COCO)
    assert cfg.model.type == 'DDSSLiBOT'
    assert cfg.model.decoupling == dict(prob=0.25, loss_weight=0.3)
    assert cfg.model.backbone.arch == 'dino-s' and cfg.model.backbone.patch_size == 16
    assert cfg.model.backbone.drop_path_rate == 0.1
    assert cfg.model.cls_head.num_prototypes == 8192 and not cfg.model.cls_head.norm_last_layer
    assert cfg.model.cls_loss.warmup_iters == 80 * 231 == cfg.model.patch_loss.warmup_iters
    assert cfg.train_cfg.max_epochs == 800 and cfg.train_dataloader.batch_size == 64
    assert math.isclose(cfg.optim_wrapper.optimizer.lr, 2e-3)
    assert cfg.optim_wrapper.optimizer.weight_decay == 0.04
    assert cfg.optim_wrapper.clip_grad.max_norm == 3.0
    rcc = [t for t in cfg.train_dataloader.dataset.pipeline
           if t['type'] == 'RegionCollaborativeCutout'][0]
    assert rcc['grid_size'] == 14 and rcc['pred_ratio'] == (0.0, 0.4)
    mv = [t for t in cfg.train_dataloader.dataset.pipeline if t['type'] == 'MultiView'][0]
    assert mv['transforms'][0][0]['crop_ratio_range'] == (0.14, 1.)
    assert cfg.custom_hooks[0].type == 'EMATeacherHook' and cfg.custom_hooks[0].momentum == 0.996
    assert Config.fromfile(COCO_BASE).model.decoupling is None
    for path in (TINY, TINY_DP):
        tiny = Config.fromfile(path)
        model = MODELS.build(tiny.model)
        assert model.backbone.embed_dims == 96
    assert Config.fromfile(TINY).model.depositioning is None
    assert Config.fromfile(TINY_DP).model.depositioning.prob == 0.25


def test_tiny_config_trains_with_tools_train(tmp_path):
    train_in_process([
        TINY_DP, '--work-dir', str(tmp_path), '--cfg-options', 'train_cfg.max_iters=2',
        'default_hooks.logger.interval=1', 'train_dataloader.batch_size=8',
        'train_dataloader.dataset.num_samples=16', 'model.backbone.arch.num_layers=2'
    ])
    rows = logged_loss_rows(tmp_path)
    assert len(rows) == 2
    for r in rows:
        for key in ('loss', 'loss_cls', 'loss_patch', 'loss_dc', 'loss_depos'):
            assert math.isfinite(r[key]), (key, r)
    # batch 8: one image pair per view enters the de-coupling branch (the RCC pool is seeded)
    assert any(r['loss_dc'] > 0 for r in rows) and all(r['loss_depos'] > 0 for r in rows)
    ckpt = torch.load(str(tmp_path / 'iter_2.pth'), map_location='cpu', weights_only=False)
    sd = ckpt['state_dict']
    assert bool(sd['teacher_initialized'])
    assert not torch.equal(sd['teacher.backbone.layers.0.attn.qkv.weight'],
                           sd['backbone.layers.0.attn.qkv.weight'])

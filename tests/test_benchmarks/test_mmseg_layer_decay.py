"""ViTLayerDecayOptimWrapperConstructor on an mmseg EncoderDecoder with an mmpretrain ViT backbone."""
import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope, init_default_scope

import cotap_mm  # noqa: F401
from cotap_test_helpers.seg_data import TINY_ARCH


def _model():
    init_default_scope('mmseg')
    from mmseg.registry import MODELS
    C = TINY_ARCH['embed_dims']
    return MODELS.build(dict(
        type='EncoderDecoder',
        backbone=dict(type='mmpretrain.CoTAPViT', arch=dict(TINY_ARCH), img_size=64, patch_size=16,
                      out_type='featmap', out_indices=(0, 1, 2, 3), final_norm=True),
        neck=dict(type='Feature2Pyramid', embed_dim=C, rescales=[4, 2, 1, 0.5],
                  norm_cfg=dict(type='BN')),
        decode_head=dict(type='UPerHead', in_channels=[C] * 4, in_index=[0, 1, 2, 3],
                         channels=16, num_classes=3, norm_cfg=dict(type='BN'))))


def _expected_depth(name: str, L: int) -> int:
    """Brute-force BEiT/MAE rule written from the key names."""
    if name in ('backbone.cls_token', 'backbone.pos_embed') or name.startswith('backbone.patch_embed'):
        return 0
    if name.startswith('backbone.layers.'):
        return int(name.split('.')[2]) + 1
    return L + 1


def test_layer_decay_groups():
    model = _model()
    L = TINY_ARCH['num_layers']
    rate, lr, wd = 0.5, 1e-3, 0.05
    with DefaultScope.overwrite_default_scope('mmseg'):
        ow = build_optim_wrapper(model, dict(
            type='OptimWrapper', optimizer=dict(type='AdamW', lr=lr, weight_decay=wd),
            constructor='mmpretrain.ViTLayerDecayOptimWrapperConstructor',
            paramwise_cfg=dict(layer_decay_rate=rate, norm_decay_mult=0., bias_decay_mult=0.,
                               custom_keys={'.pos_embed': dict(decay_mult=0.),
                                            '.cls_token': dict(decay_mult=0.)})))
    groups = ow.optimizer.param_groups
    names = {n for n, _ in model.named_parameters()}
    assert {g['param_name'] for g in groups} == names
    for g in groups:
        n = g['param_name']
        depth = _expected_depth(n, L)
        assert g['lr'] == pytest.approx(lr * rate**(L + 1 - depth)), n
        no_decay = (n.endswith('.bias') or 'ln' in n.split('.')[-2] or 'bn' in n or '.norm' in n
                    or n.endswith(('pos_embed', 'cls_token')) or g['params'][0].ndim == 1)
        assert g['weight_decay'] == (0. if no_decay else wd), n
    # the first block trains slower than the last, the head at the full lr
    lr_of = {g['param_name']: g['lr'] for g in groups}
    assert lr_of['backbone.layers.0.attn.qkv.weight'] < lr_of['backbone.layers.3.attn.qkv.weight']
    assert lr_of['decode_head.conv_seg.weight'] == pytest.approx(lr)


def test_frozen_params_skipped_and_bad_model():
    model = _model()
    for p in model.backbone.layers[0].parameters():
        p.requires_grad = False
    from cotap_mm.engine.optimizers import ViTLayerDecayOptimWrapperConstructor
    ctor = ViTLayerDecayOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.)),
        dict(layer_decay_rate=0.9))
    with DefaultScope.overwrite_default_scope('mmseg'):
        ow = ctor(model)
    got = {g['param_name'] for g in ow.optimizer.param_groups}
    assert not any(n.startswith('backbone.layers.0.') for n in got)
    with pytest.raises(TypeError, match='get_layer_depth'):
        ctor(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match='weight_decay'):
        ViTLayerDecayOptimWrapperConstructor(
            dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3)), dict())

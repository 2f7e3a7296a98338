import argparse
import os.path as osp
from functools import partial

import pytest
import torch

from cotap_mm.models.backbones.cotap_vit import CoTAPViT
from cotap_test_helpers.tool_runs import load_tool as load_tool_file
from cotap_test_helpers.tool_runs import run_tool_cli

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
TINY = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)


class Foo:  # a pickled class that weights_only refuses
    pass


load_tool = partial(load_tool_file, 'tools/model_converters/vit2cotap.py', 'vit2cotap')


def fake_dino_backbone(C=32, L=2, hidden=64, grid=4, patch=16):
    g = torch.Generator().manual_seed(0)
    sd = {
        'cls_token': torch.randn(1, 1, C, generator=g),
        'pos_embed': torch.randn(1, 1 + grid * grid, C, generator=g),
        'patch_embed.proj.weight': torch.randn(C, 3, patch, patch, generator=g),
        'patch_embed.proj.bias': torch.randn(C, generator=g),
        'norm.weight': torch.randn(C, generator=g),
        'norm.bias': torch.randn(C, generator=g),
    }
    for i in range(L):
        for name, shape in [('norm1', (C, )), ('norm2', (C, ))]:
            sd[f'blocks.{i}.{name}.weight'] = torch.randn(*shape, generator=g)
            sd[f'blocks.{i}.{name}.bias'] = torch.randn(*shape, generator=g)
        for name, (o, n) in [('attn.qkv', (3 * C, C)), ('attn.proj', (C, C)), ('mlp.fc1', (hidden, C)),
                             ('mlp.fc2', (C, hidden))]:
            sd[f'blocks.{i}.{name}.weight'] = torch.randn(o, n, generator=g)
            sd[f'blocks.{i}.{name}.bias'] = torch.randn(o, generator=g)
    return sd


def test_dino_teacher_checkpoint(tmp_path):
    tool = load_tool()
    sd = fake_dino_backbone()
    ckpt = {
        'teacher': {**{'backbone.' + k: v for k, v in sd.items()},
                    'head.mlp.0.weight': torch.randn(8, 32), 'head.last_layer.weight_g': torch.ones(1, 1)},
        'student': {'module.backbone.' + k: torch.zeros_like(v) for k, v in sd.items()},
        'epoch': 100,
        'args': argparse.Namespace(arch='vit_small', patch_size=16),  # DINO stores its args
    }
    src, dst = tmp_path / 'dino_full.pth', tmp_path / 'out' / 'cotap.pth'
    torch.save(ckpt, src)
    tool.main([str(src), str(dst), '--src-format', 'dino'])

    out = torch.load(dst, map_location='cpu', weights_only=True)  # plain data only
    assert set(out) == {'state_dict', 'meta'}
    assert all(k.startswith('backbone.') for k in out['state_dict'])
    assert out['meta']['arch']['embed_dims'] == 32 and out['meta']['arch']['num_layers'] == 2
    assert out['meta']['arch']['patch_size'] == 16
    assert sorted(out['meta']['dropped_keys']) == ['head.last_layer.weight_g', 'head.mlp.0.weight']

    model = CoTAPViT(arch=TINY, img_size=64, out_type='raw')
    sd_model = {k[len('backbone.'):]: v for k, v in out['state_dict'].items()}
    model.load_state_dict(sd_model, strict=True)
    # teacher weights (not the zero student) arrived where DINO had them
    torch.testing.assert_close(model.layers[1].ffn.layers[0][0].weight, sd['blocks.1.mlp.fc1.weight'])
    torch.testing.assert_close(model.layers[0].attn.qkv.bias, sd['blocks.0.attn.qkv.bias'])
    torch.testing.assert_close(model.ln1.weight, sd['norm.weight'])
    torch.testing.assert_close(model.patch_embed.projection.weight, sd['patch_embed.proj.weight'])

    # the mmengine Pretrained init path the configs use
    m2 = CoTAPViT(arch=TINY, img_size=64,
                  init_cfg=dict(type='Pretrained', checkpoint=str(dst), prefix='backbone.'))
    m2.init_weights()
    torch.testing.assert_close(m2.pos_embed, sd['pos_embed'])


def test_student_branch_and_flat_ibot(tmp_path):
    tool = load_tool()
    sd = fake_dino_backbone()
    ibot = {'state_dict': {**{'module.backbone.' + k: v for k, v in sd.items()},
                           'module.backbone.masked_embed': torch.zeros(32)}}
    src, dst = tmp_path / 'ibot.pth', tmp_path / 'ibot_cotap.pth'
    torch.save(ibot, src)
    out = tool.main([str(src), str(dst), '--src-format', 'ibot'])
    assert 'masked_embed' in out['meta']['dropped_keys']
    torch.testing.assert_close(out['state_dict']['backbone.cls_token'], sd['cls_token'])


def test_unknown_keys_and_unsafe_files(tmp_path):
    tool = load_tool()
    sd = fake_dino_backbone()
    sd['blocks.0.mystery.weight'] = torch.zeros(1)
    src = tmp_path / 'bad.pth'
    torch.save(sd, src)
    with pytest.raises(ValueError, match='not DINO/iBOT/timm'):
        tool.main([str(src), str(tmp_path / 'o.pth')])
    out = tool.main([str(src), str(tmp_path / 'o.pth'), '--non-strict'])
    assert 'blocks.0.mystery.weight' in out['meta']['dropped_keys']

    torch.save({'model': fake_dino_backbone(), 'x': Foo()}, tmp_path / 'unsafe.pth')
    with pytest.raises(RuntimeError, match='--trust-checkpoint'):
        tool.main([str(tmp_path / 'unsafe.pth'), str(tmp_path / 'o2.pth')])


def test_timm_format_refuses_teacher_student(tmp_path):
    tool = load_tool()
    src = tmp_path / 'dino.pth'
    torch.save({'teacher': {'backbone.' + k: v for k, v in fake_dino_backbone().items()}}, src)
    with pytest.raises(ValueError, match="src_format='timm'"):
        tool.main([str(src), str(tmp_path / 'o.pth'), '--src-format', 'timm'])
    with pytest.raises(FileNotFoundError):
        tool.main([str(tmp_path / 'missing.pth'), str(tmp_path / 'o.pth')])


def test_dinov2_checkpoint_cli_matches_timm(tmp_path):
    """DINOv2-layout checkpoint (patch 14, LayerScale, mask_token) through the CLI -> same features."""
    timm_vit = pytest.importorskip('timm.models.vision_transformer')
    tm = timm_vit.VisionTransformer(img_size=56, patch_size=14, embed_dim=32, depth=2, num_heads=2,
                                    init_values=1e-5, num_classes=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tm.parameters():
            p.copy_((1.0 if p.dim() == 1 else 0.) + 0.2 * torch.randn(p.shape, generator=g))
    tm.eval()
    # DINOv2 hub file layout: flat, timm-like names + mask_token
    src, dst = tmp_path / 'dinov2_vits14_pretrain.pth', tmp_path / 'dinov2_cotap.pth'
    torch.save({**tm.state_dict(), 'mask_token': torch.zeros(1, 32)}, src)
    proc = run_tool_cli(osp.join(ROOT, 'tools', 'model_converters', 'vit2cotap.py'), src, dst,
                        '--src-format', 'dinov2', '--num-heads', '2')
    assert proc.returncode == 0, proc.stderr
    assert 'CoTAPViT kwargs' in proc.stdout
    out = torch.load(dst, map_location='cpu', weights_only=True)
    assert out['meta']['dropped_keys'] == ['mask_token']
    kwargs = out['meta']['cotap_vit_kwargs']
    assert kwargs['patch_size'] == 14 and kwargs['img_size'] == 56 and kwargs['layer_scale_init_value'] > 0
    assert kwargs['arch'] == dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=128)
    model = CoTAPViT(out_type='raw', **kwargs,
                     init_cfg=dict(type='Pretrained', checkpoint=str(dst), prefix='backbone.'))
    model.init_weights()
    model.eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[-1], tm.forward_features(x), rtol=1e-5, atol=1e-5)


def test_dinov2_registers_refused(tmp_path):
    tool = load_tool()
    sd = fake_dino_backbone(patch=14)
    sd['register_tokens'] = torch.zeros(1, 4, 32)
    src = tmp_path / 'dinov2_vits14_reg4_pretrain.pth'
    torch.save(sd, src)
    for extra in ([], ['--non-strict']):
        with pytest.raises(ValueError, match='register tokens'):
            tool.main([str(src), str(tmp_path / 'o.pth'), '--src-format', 'dinov2', *extra])
    assert not (tmp_path / 'o.pth').exists()

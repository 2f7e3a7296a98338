import argparse
import importlib.util
import os.path as osp

import pytest
import torch

from cotap_mm.models.backbones.cotap_vit import CoTAPViT

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
TINY = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)


class Foo:  # a pickled class that weights_only refuses
    pass


def load_tool():
    path = osp.join(ROOT, 'tools', 'model_converters', 'vit2cotap.py')
    spec = importlib.util.spec_from_file_location('vit2cotap', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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

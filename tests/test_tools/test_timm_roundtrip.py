"""tools/model_converters/cotap2timm.py: our backbone -> timm ViT -> back, checked on features."""
import os.path as osp
from functools import partial

import pytest
import torch

from cotap_mm.models.backbones.cotap_vit import CoTAPViT
from cotap_test_helpers.tool_runs import load_tool as load_tool_file
from cotap_test_helpers.tool_runs import run_tool_cli

timm = pytest.importorskip('timm')
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
TOOL = osp.join(ROOT, 'tools', 'model_converters', 'cotap2timm.py')
TINY = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)


load_tool = partial(load_tool_file, 'tools/model_converters/cotap2timm.py', 'cotap2timm')


def tiny_ours(seed=0, **kwargs) -> CoTAPViT:
    kwargs.setdefault('img_size', 64)
    m = CoTAPViT(arch=TINY, out_type='raw', **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            base = 1.0 if p.dim() == 1 and ('ln' in name or 'gamma' in name) else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
    m.eval()
    return m


def features_equal(ours: CoTAPViT, tm, img: int):
    x = torch.randn(2, 3, img, img, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(tm.forward_features(x), ours(x)[-1], rtol=1e-5, atol=1e-5)


def test_cli_round_trip_through_timm(tmp_path):
    ours = tiny_ours()
    src = tmp_path / 'cotap_pub.pth'
    sd = ours.state_dict()
    torch.save({'state_dict': {'backbone.' + k: v for k, v in sd.items()}, 'meta': {}}, src)

    dst = tmp_path / 'timm.pth'
    proc = run_tool_cli(TOOL, src, dst)
    assert proc.returncode == 0, proc.stderr
    timm_sd = torch.load(dst, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in timm_sd.values())  # flat, like timm's files

    # 1) plain timm module with the same dims, strict load, same tokens after the final norm
    tm = TimmViT(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2., num_classes=0)
    tm.load_state_dict(timm_sd, strict=True)
    tm.eval()
    features_equal(ours, tm, 64)
    # 2) the timm user path: a registered model name + the file as pretrained weights (no download)
    tm2 = timm.create_model('vit_small_patch16_224', pretrained=True, num_classes=0, img_size=64,
                            embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.,
                            pretrained_cfg_overlay=dict(file=str(dst)))
    tm2.eval()
    features_equal(ours, tm2, 64)

    # 3) back to our layout (same CLI, in-process to save a subprocess): the same state dict, bit for bit
    back = tmp_path / 'back.pth'
    load_tool().main([str(dst), str(back), '--to', 'cotap'])
    out = torch.load(back, weights_only=True)
    assert set(out['state_dict']) == {'backbone.' + k for k in sd}
    for k, v in sd.items():
        assert torch.equal(out['state_dict']['backbone.' + k], v), k
    assert out['meta']['src_format'] == 'timm'


def test_dinov2_style_backbone_round_trip(tmp_path):
    """Patch 14 + LayerScale (and SwiGLU) backbones map to timm's DINOv2 layout and back."""
    tool = load_tool()
    for swiglu in (False, True):
        kw = dict(img_size=56, patch_size=14, layer_scale_init_value=1e-5)
        arch = dict(TINY, feedforward_channels=128 if swiglu else 64)
        if swiglu:
            kw['layer_cfgs'] = dict(ffn_type='swiglu_fused')  # SwiGLU hidden (int(128*2/3)+7)//8*8 = 88
        ours = CoTAPViT(arch=arch, out_type='raw', **kw)
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for name, p in ours.named_parameters():
                p.copy_((1.0 if p.dim() == 1 and ('ln' in name or 'gamma' in name) else 0.) +
                        0.2 * torch.randn(p.shape, generator=g))
        ours.eval()
        sd = ours.state_dict()
        timm_sd = tool.cotap_to_timm({'state_dict': {'backbone.' + k: v for k, v in sd.items()}})
        extra = dict(mlp_ratio=2.)
        if swiglu:
            from timm.layers import SwiGLUPacked
            extra = dict(mlp_ratio=176 / 32, mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU)
        tm = TimmViT(img_size=56, patch_size=14, embed_dim=32, depth=2, num_heads=2, init_values=1e-5,
                     num_classes=0, **extra)
        tm.load_state_dict(timm_sd, strict=True)
        tm.eval()
        features_equal(ours, tm, 56)
        back = tool.convert_checkpoint(timm_sd, src_format='timm')['state_dict']
        assert set(back) == {'backbone.' + k for k in sd}
        assert all(torch.equal(back['backbone.' + k], v) for k, v in sd.items())


def test_training_checkpoint_defaults_to_teacher_and_errors(tmp_path):
    tool = load_tool()
    student, teacher = tiny_ours(0).state_dict(), tiny_ours(1).state_dict()
    ckpt = {'state_dict': {**{'backbone.' + k: v for k, v in student.items()},
                           **{'teacher.backbone.' + k: v for k, v in teacher.items()},
                           'neck.prototypes': torch.zeros(4, 32), 'teacher_initialized': torch.tensor(True)},
            'meta': {'epoch': 1}}
    t = tool.cotap_to_timm(ckpt)
    assert torch.equal(t['blocks.0.attn.qkv.weight'], teacher['layers.0.attn.qkv.weight'])
    s = tool.cotap_to_timm(ckpt, keep_prefix='backbone.')
    assert torch.equal(s['blocks.0.attn.qkv.weight'], student['layers.0.attn.qkv.weight'])
    bare = tool.cotap_to_timm(teacher)  # a bare mmpretrain state dict
    assert set(bare) == set(t) and all(torch.equal(bare[k], t[k]) for k in t)

    with pytest.raises(ValueError, match=r"no backbone keys found.*'decode_head\.conv_seg \(1\)'"):
        tool.cotap_to_timm({'state_dict': {'decode_head.conv_seg.weight': torch.zeros(2)}})
    with pytest.raises(ValueError, match='without a timm counterpart'):  # out_type='avg_featmap' extra norm
        tool.cotap_to_timm({**teacher, 'ln2.weight': torch.ones(32)})
    with pytest.raises(ValueError, match='not an mmpretrain ViT'):
        tool.cotap_to_timm({'state_dict': {'backbone.conv1.weight': torch.zeros(2)}})
    with pytest.raises(FileNotFoundError):
        tool.main([str(tmp_path / 'missing.pth'), str(tmp_path / 'o.pth')])

    info = dict(embed_dims=384, num_layers=12, patch_size=16, pos_embed_grid=[14, 14], final_norm=True,
                layer_scale=False, ffn_type='origin')
    assert tool.suggest_timm_model(info) == 'vit_small_patch16_224'
    assert tool.suggest_timm_model(dict(info, patch_size=14, pos_embed_grid=[37, 37],
                                        layer_scale=True)) == 'vit_small_patch14_dinov2'
    assert tool.suggest_timm_model(dict(info, embed_dims=32)) is None

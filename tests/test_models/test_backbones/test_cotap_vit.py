import functools
import math

import numpy as np
import pytest
import torch

from cotap_mm.models.backbones.cotap_vit import (CoTAPViT, foreground_mask, gaussian_blur2d,
                                                 remove_small_components)
from cotap_mm.models.backbones.vit_key_mapping import (convert_dino_vit, convert_to_timm,
                                                       unwrap_checkpoint)

TINY = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)


def tiny_vit(**kwargs):
    torch.manual_seed(0)
    kwargs.setdefault('img_size', 64)
    m = CoTAPViT(arch=TINY, **kwargs)
    # random non-trivial weights everywhere (incl. cls/pos, LayerNorm affine)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.dim() == 1 and p.shape[0] == 32 else 0.0))
    m.eval()
    return m


# ----------------------------------------------------------------------------- construction / forward
def test_arch_presets():
    s = CoTAPViT(arch='dino-s')
    assert (s.embed_dims, s.num_layers, s.num_heads) == (384, 12, 6)
    assert s.layers[0].ffn.layers[0][0].out_features == 1536
    assert s.layers[0].attn.qkv.bias is not None
    assert s.layers[0].ln1.eps == 1e-6
    assert s.arch_settings == CoTAPViT.arch_zoo['dino-small']
    b = CoTAPViT.arch_zoo['dino-b']
    assert (b['embed_dims'], b['num_layers'], b['num_heads'], b['feedforward_channels']) == (768, 12, 12, 3072)
    assert all(float(layer.attn.out_drop.drop_prob) == 0 for layer in s.layers)


def test_registry_and_mmseg_scope():
    from mmpretrain.registry import MODELS
    from mmseg.registry import MODELS as SEG_MODELS
    m = MODELS.build(dict(type='CoTAPViT', arch=TINY, img_size=32))
    assert isinstance(m, CoTAPViT)
    m2 = SEG_MODELS.build(
        dict(type='mmpretrain.CoTAPViT', arch=TINY, img_size=32, out_type='featmap', out_indices=(0, 1)))
    outs = m2(torch.randn(2, 3, 48, 32))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 3, 2), (2, 32, 3, 2)]


def test_forward_pre_last_plus_last_block_equals_forward():
    m = tiny_vit(out_type='raw')
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        tokens, hw = m.forward_pre_last(x)
        assert hw == (4, 3)
        assert tokens.shape == (2, 1 + 12, 32)
        out = m.ln1(m.last_block(tokens))
        ref = m(x)[-1]
    assert m.last_block is m.layers[-1]
    torch.testing.assert_close(out, ref)


def test_patch_size_8():
    m = CoTAPViT(arch=TINY, img_size=32, patch_size=8)
    tokens, hw = m.forward_pre_last(torch.randn(1, 3, 48, 32))
    assert hw == (6, 4) and tokens.shape == (1, 25, 32)
    assert m.last_cls_attention(tokens).shape == (1, 2, 24)


def test_forward_pre_last_rejects_bad_input():
    m = tiny_vit()
    with pytest.raises(ValueError, match=r'\[B, C, H, W\]'):
        m.forward_pre_last(torch.randn(3, 64, 64))


def test_last_cls_attention_brute_force():
    m = tiny_vit()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens, hw = m.forward_pre_last(x)
        attn = m.last_cls_attention(tokens)
    N = hw[0] * hw[1]
    assert attn.shape == (2, 2, N)
    # brute force straight from the formula, in float64
    blk = m.last_block
    t = tokens.double()
    y = torch.nn.functional.layer_norm(t, (32, ), blk.ln1.weight.detach().double(),
                                       blk.ln1.bias.detach().double(), 1e-6)
    W, b = blk.attn.qkv.weight.detach().double(), blk.attn.qkv.bias.detach().double()
    d = 16
    for bi in range(2):
        for h in range(2):
            q = y[bi, 0] @ W[h * d:(h + 1) * d].t() + b[h * d:(h + 1) * d]
            logits = []
            for j in range(1 + N):
                k = y[bi, j] @ W[32 + h * d:32 + (h + 1) * d].t() + b[32 + h * d:32 + (h + 1) * d]
                logits.append(float(q @ k) / math.sqrt(d))
            e = np.exp(np.array(logits) - max(logits))
            ref = e / e.sum()
            np.testing.assert_allclose(attn[bi, h].numpy(), ref[1:], rtol=1e-4, atol=1e-6)
    # CLS->CLS entry was dropped, not renormalised
    assert (attn.sum(-1) < 1).all()


def test_last_cls_attention_bad_shape():
    m = tiny_vit()
    with pytest.raises(ValueError, match='tokens_pre_last'):
        m.last_cls_attention(torch.randn(2, 17, 31))


# ----------------------------------------------------------------------------- timm equivalence
timm = pytest.importorskip('timm')


def _timm_and_ours(**timm_kwargs):
    torch.manual_seed(0)
    tm = timm.create_model('vit_small_patch16_224', pretrained=False, num_classes=0, **timm_kwargs).eval()
    with torch.no_grad():  # make biases / LayerNorm affine non-trivial
        for name, p in tm.named_parameters():
            if name.endswith('bias') or 'norm' in name:
                p.add_(torch.randn_like(p) * 0.1)
    ours = CoTAPViT(arch='dino-s', out_type='raw')
    ours.eval()
    ours.load_state_dict(convert_dino_vit(tm.state_dict()), strict=True)
    return tm, ours


def test_timm_equivalence_224():
    tm, ours = _timm_and_ours()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = tm.forward_features(x)  # [B, 197, 384] after final norm
        out = ours(x)[-1]
    assert out.shape == ref.shape == (2, 197, 384)
    torch.testing.assert_close(out[:, 0], ref[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, 1:], ref[:, 1:], atol=1e-5, rtol=1e-5)


def test_timm_equivalence_other_size(monkeypatch):
    try:
        tm, ours = _timm_and_ours(dynamic_img_size=True)
    except TypeError:
        pytest.skip('timm without dynamic_img_size')
    import timm.models.vision_transformer as tvit
    # mmpretrain resizes pos-embed with plain bicubic (align_corners=False, no antialias); timm
    # defaults to antialias=True, whose bicubic kernel differs even when upsampling.
    monkeypatch.setattr(tvit, 'resample_abs_pos_embed',
                        functools.partial(tvit.resample_abs_pos_embed, antialias=False))
    x = torch.randn(1, 3, 256, 320)
    with torch.no_grad():
        ref = tm.forward_features(x)
        out = ours(x)[-1]
        tokens, hw = ours.forward_pre_last(x)
    assert hw == (16, 20)
    assert tokens.shape == (1, 1 + 320, 384)
    assert out.shape == ref.shape == (1, 321, 384)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_convert_round_trip_and_wrappers():
    tm = timm.create_model('vit_small_patch16_224', pretrained=False, num_classes=0)
    sd = tm.state_dict()
    back = convert_to_timm(convert_dino_vit(sd))
    assert list(back.keys()) == list(sd.keys())
    assert all(back[k] is sd[k] for k in sd)
    # DINO teacher / iBOT module.backbone wrappers give the same result, heads dropped
    dino = {'teacher': {**{'backbone.' + k: v for k, v in sd.items()}, 'head.last_layer.weight_g': torch.ones(1)},
            'student': {'module.backbone.' + k: v * 0 for k, v in sd.items()}, 'epoch': 3}
    ibot = {'state_dict': {**{'module.backbone.' + k: v for k, v in sd.items()},
                           'module.backbone.masked_embed': torch.zeros(384), 'module.head.mlp.0.weight': torch.ones(2)}}
    for ck in (dino, ibot):
        conv = convert_dino_vit(ck)
        assert set(conv) == set(convert_dino_vit(sd))
        assert all(torch.equal(conv[k], convert_dino_vit(sd)[k]) for k in conv)
    student = unwrap_checkpoint(dino, branch='student')
    assert torch.equal(student['cls_token'], sd['cls_token'] * 0)


def test_convert_errors():
    with pytest.raises(ValueError, match='not DINO/iBOT/timm'):
        convert_dino_vit({'pos_embed': torch.zeros(1, 5, 4), 'patch_embed.proj.weight': torch.zeros(4, 3, 2, 2),
                          'blocks.0.weird.weight': torch.zeros(1)})
    with pytest.raises(ValueError, match='already in mmpretrain'):
        convert_dino_vit({'layers.0.ln1.weight': torch.zeros(4)})
    with pytest.raises(TypeError, match='mapping'):
        convert_dino_vit([1, 2])
    with pytest.raises(ValueError, match='timm counterpart'):
        convert_to_timm({'ln2.weight': torch.zeros(3)})


# ----------------------------------------------------------------------------- foreground mask
def _np_blur(a, k=7, sigma=0.6):
    from scipy import ndimage
    return ndimage.gaussian_filter(a.astype(np.float64), sigma, mode='mirror', radius=k // 2)


def test_gaussian_blur_vs_scipy():
    pytest.importorskip('scipy')
    x = torch.rand(3, 9, 11, dtype=torch.float64)
    out = gaussian_blur2d(x, 7, 0.6)
    for i in range(3):
        np.testing.assert_allclose(out[i].numpy(), _np_blur(x[i].numpy()), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match='kernel_size'):
        gaussian_blur2d(x, 4, 0.6)
    with pytest.raises(ValueError, match='reflect padding'):
        gaussian_blur2d(torch.rand(1, 3, 3), 7, 0.6)


def test_remove_small_components_vs_scipy():
    from scipy import ndimage
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(4, 10, 12, generator=g) > 0.65
    out = remove_small_components(mask, 3)
    for i in range(4):
        lab, n = ndimage.label(mask[i].numpy(), structure=np.ones((3, 3)))
        ref = mask[i].numpy().copy()
        for c in range(1, n + 1):
            if (lab == c).sum() < 3:
                ref[lab == c] = False
        np.testing.assert_array_equal(out[i].numpy(), ref)
    assert torch.equal(remove_small_components(mask, 0), mask)


def _np_foreground(attn, keep_mass, min_size):
    """Reference: head mean, blur, greedy top patches until >= keep_mass, drop small components."""
    from scipy import ndimage
    B = attn.shape[0]
    out = []
    for b in range(B):
        a = _np_blur(attn[b].mean(0))
        flat = a.ravel()
        order = np.argsort(-flat)
        keep = np.zeros(flat.size, bool)
        acc = 0.0
        for i in order:
            if acc >= keep_mass * flat.sum():
                break
            keep[i] = True
            acc += flat[i]
        keep = keep.reshape(a.shape)
        if min_size > 1:
            lab, n = ndimage.label(keep, structure=np.ones((3, 3)))
            for c in range(1, n + 1):
                if (lab == c).sum() < min_size:
                    keep[lab == c] = False
        out.append(keep)
    return np.stack(out)


@pytest.mark.parametrize('min_size', [0, 3])
def test_foreground_mask_vs_reference(min_size):
    g = torch.Generator().manual_seed(1)
    attn = torch.rand(3, 4, 8, 10, generator=g, dtype=torch.float64) ** 4
    mask = foreground_mask(attn, min_component_size=min_size)
    assert mask.dtype == torch.bool and mask.shape == (3, 8, 10)
    np.testing.assert_array_equal(mask.numpy(), _np_foreground(attn.numpy(), 0.6, min_size))
    # flattened [B, heads, N] input with explicit hw gives the same
    mask2 = foreground_mask(attn.flatten(2), hw=(8, 10), min_component_size=min_size)
    assert torch.equal(mask, mask2)


def test_foreground_mask_keeps_smallest_set():
    attn = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    mask = foreground_mask(attn, keep_mass=0.6, min_component_size=0)
    a = gaussian_blur2d(attn.mean(1), 7, 0.6)
    for b in range(2):
        kept = a[b][mask[b]]
        total = a[b].sum()
        assert kept.sum() >= 0.6 * total - 1e-9
        assert kept.sum() - kept.min() < 0.6 * total  # dropping any kept patch goes below 60 %
        assert a[b][~mask[b]].max() <= kept.min()  # kept patches are the largest ones


def test_foreground_mask_errors():
    with pytest.raises(ValueError, match='hw'):
        foreground_mask(torch.rand(1, 2, 12))
    with pytest.raises(ValueError, match='does not match'):
        foreground_mask(torch.rand(1, 2, 12), hw=(5, 3))
    with pytest.raises(ValueError, match='keep_mass'):
        foreground_mask(torch.rand(1, 2, 4, 4), keep_mass=0)
    with pytest.raises(ValueError, match='cls_attn'):
        foreground_mask(torch.rand(2, 4))


def test_pretrained_init_cfg_is_strict(tmp_path):
    """A start checkpoint of the wrong architecture fails, naming how many keys and the first few;
    ``strict=False`` on purpose only logs; a position embedding of another grid is resized."""
    from cotap_mm.utils.start_weights import StartWeightsError
    src = tiny_vit(img_size=64)
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in src.state_dict().items()}}, good)
    ours = tiny_vit(img_size=32, init_cfg=dict(type='Pretrained', checkpoint=str(good),
                                              prefix='backbone.'))
    ours.init_weights()
    assert torch.equal(ours.patch_embed.projection.weight, src.patch_embed.projection.weight)

    wrong = tmp_path / 'foo.pth'
    torch.save({'state_dict': {'foo.weight': torch.zeros(1)}}, wrong)
    n = len(src.state_dict())
    vit = tiny_vit(init_cfg=dict(type='Pretrained', checkpoint=str(wrong)))
    with pytest.raises(StartWeightsError, match=rf'{n} of {n} keys missing from {wrong}: cls_token'):
        vit.init_weights()
    wide = tmp_path / 'wide.pth'
    torch.save(CoTAPViT(arch=dict(TINY, embed_dims=64), img_size=64).state_dict(), wide)
    vit = tiny_vit(init_cfg=dict(type='Pretrained', checkpoint=str(wide)))
    with pytest.raises(StartWeightsError, match=r'keys shaped differently .*cls_token '
                       r'\(checkpoint \[1, 1, 64\] vs model \[1, 1, 32\]\)'):
        vit.init_weights()
    tiny_vit(init_cfg=dict(type='Pretrained', checkpoint=str(wrong), strict=False)).init_weights()
    with pytest.raises(TypeError, match='prefx'):
        tiny_vit(init_cfg=dict(type='Pretrained', checkpoint=str(good), prefx='x')).init_weights()

"""vit_key_mapping: DINO / iBOT / DINOv2 / timm trunks -> CoTAPViT, checked against timm's forward."""
import pytest
import torch

from cotap_mm.models.backbones.cotap_vit import CoTAPViT
from cotap_mm.models.backbones.vit_key_mapping import (check_representable, convert_dino_vit,
                                                       convert_to_timm, default_backbone_prefix,
                                                       extract_prefixed, infer_vit_arch,
                                                       key_prefixes, map_dino_key, split_checkpoint,
                                                       unchunk_blocks, unpack_timm_swiglu,
                                                       vit_kwargs_from_arch)

timm = pytest.importorskip('timm')
from timm.layers import SwiGLUPacked  # noqa: E402
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402

C, HEADS, DEPTH = 32, 2, 2


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights everywhere (LayerScale gammas ~ 1, not 1e-5, so they matter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if (name.endswith('gamma') or 'norm' in name) and p.dim() == 1 else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def timm_dinov2(swiglu: bool = False, seed: int = 0) -> TimmViT:
    """A tiny ViT with DINOv2's structure: patch 14, LayerScale, 4x4 grid (the 37x37 of 518 px, shrunk)."""
    kw = dict(mlp_ratio=5.5, mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU) if swiglu else {}
    m = TimmViT(img_size=56, patch_size=14, embed_dim=C, depth=DEPTH, num_heads=HEADS, init_values=1e-5,
                num_classes=0, **kw)
    return randomize_(m, seed)


def to_dinov2_names(timm_sd, swiglu=False):
    """timm -> the key names of facebookresearch/dinov2 (``DinoVisionTransformer``).

    DINOv2 uses timm's names for everything but the packed SwiGLU (DINOv2: ``mlp.w12`` / ``mlp.w3``) and
    additionally stores ``mask_token`` [1, C] (for iBOT-style masking; unused at inference).
    """
    sd = {}
    for k, v in timm_sd.items():
        if swiglu:
            k = k.replace('.mlp.fc1.', '.mlp.w12.').replace('.mlp.fc2.', '.mlp.w3.')
        sd[k] = v
    sd['mask_token'] = torch.zeros(1, C)
    return sd


def ours_from(converted, num_heads=HEADS) -> CoTAPViT:
    kwargs = vit_kwargs_from_arch(infer_vit_arch(converted), num_heads=num_heads)
    m = CoTAPViT(out_type='raw', **kwargs)
    m.load_state_dict(converted, strict=True)
    m.eval()
    return m


def assert_same_features(tm: TimmViT, ours: CoTAPViT, img: int = 56):
    x = torch.randn(2, 3, img, img, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = tm.forward_features(x)  # [B, 1+N, C], after the final norm
        out = ours(x)[-1]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('swiglu', [False, True])
def test_dinov2_import_matches_timm(swiglu):
    tm = timm_dinov2(swiglu)
    sd = to_dinov2_names(tm.state_dict(), swiglu)
    converted = convert_dino_vit(sd)
    assert 'mask_token' not in converted
    info = infer_vit_arch(converted)
    assert info['layer_scale'] and info['patch_size'] == 14 and info['pos_embed_grid'] == [4, 4]
    assert info['ffn_type'] == ('swiglu_fused' if swiglu else 'origin')
    ours = ours_from(converted)
    assert isinstance(ours.layers[0].attn.gamma1, torch.nn.Module)
    torch.testing.assert_close(ours.layers[1].ffn.gamma2.weight, sd['blocks.1.ls2.gamma'])
    assert_same_features(tm, ours)
    if swiglu:
        # timm's own packed names (``vit_giant_patch14_dinov2``) give the same model
        converted_timm = convert_dino_vit(tm.state_dict())
        assert set(converted_timm) == set(converted)
        assert all(torch.equal(converted_timm[k], converted[k]) for k in converted)
        # and ours -> timm restores the packed names exactly
        back = convert_to_timm(converted)
        assert set(back) == set(tm.state_dict())


def test_dinov2_containers_and_chunks():
    """teacher_checkpoint.pth, full training checkpoints (model.teacher/student) and block chunks."""
    tm_t, tm_s = timm_dinov2(seed=0), timm_dinov2(seed=1)
    t_sd, s_sd = to_dinov2_names(tm_t.state_dict()), to_dinov2_names(tm_s.state_dict())
    ref = convert_dino_vit(t_sd)

    def same(a, b):
        return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)

    teacher_ckpt = {'teacher': {**{'backbone.' + k: v for k, v in t_sd.items()},
                                'dino_head.mlp.0.weight': torch.zeros(4, C),
                                'ibot_head.mlp.0.weight': torch.zeros(4, C)}}
    assert same(convert_dino_vit(teacher_ckpt), ref)
    full = {'model': {**{'teacher.backbone.' + k: v for k, v in t_sd.items()},
                      **{'student.backbone.' + k: v for k, v in s_sd.items()},
                      'teacher.dino_head.last_layer.weight': torch.zeros(4, 4)},
            'optimizer': {'state': {}}, 'iteration': 10}
    assert same(convert_dino_vit(full), ref)
    assert same(convert_dino_vit(full, branch='student'), convert_dino_vit(s_sd))
    _, dropped = split_checkpoint(full)
    assert 'student.backbone.cls_token' in dropped and 'backbone.cls_token' not in dropped

    # block_chunks=2: chunk c holds blocks with their global index (earlier ones are Identity)
    chunk_size = DEPTH // 2
    chunked = {}
    for k, v in t_sd.items():
        if k.startswith('blocks.'):
            i = int(k.split('.')[1])
            k = f'blocks.{i // chunk_size}.{i}.' + k.split('.', 2)[2]
        chunked[k] = v
    assert 'blocks.1.1.norm1.weight' in chunked
    assert list(unchunk_blocks(chunked)) == list(t_sd)
    assert map_dino_key('blocks.3.7.ls1.gamma') == 'layers.7.attn.gamma1.weight'
    assert same(convert_dino_vit(chunked), ref)
    assert_same_features(tm_t, ours_from(convert_dino_vit(chunked)))


def test_registers_refused():
    sd = to_dinov2_names(timm_dinov2().state_dict())
    sd['register_tokens'] = torch.zeros(1, 4, C)
    for strict in (True, False):
        with pytest.raises(ValueError, match=r'register_tokens.*\(1, 4, 32\).*without registers'):
            convert_dino_vit(sd, strict=strict)
    with pytest.raises(ValueError, match='reg_token'):
        check_representable({'reg_token': torch.zeros(1, 4, C)})
    check_representable({'cls_token': torch.zeros(1, 1, C)})  # fine


def dino_vit(seed=0, patch=16, img=64):
    """DINO/iBOT ViT (same modules as timm's: qkv bias, LN eps 1e-6, no LayerScale)."""
    return randomize_(TimmViT(img_size=img, patch_size=patch, embed_dim=C, depth=DEPTH, num_heads=HEADS,
                              mlp_ratio=2., num_classes=0), seed)


def test_dino_and_ibot_wrappers_match_timm():
    tm_t, tm_s = dino_vit(0), dino_vit(1)
    t_sd, s_sd = tm_t.state_dict(), tm_s.state_dict()
    head = {'head.mlp.0.weight': torch.zeros(8, C), 'head.last_layer.weight_g': torch.ones(1, 1)}
    containers = {
        # DINO full checkpoint: teacher plain, student DDP-wrapped (module.)
        'dino_full': {'teacher': {**{'backbone.' + k: v for k, v in t_sd.items()}, **head},
                      'student': {**{'module.backbone.' + k: v for k, v in s_sd.items()},
                                  **{'module.' + k: v for k, v in head.items()}}, 'epoch': 100},
        # iBOT checkpoint_teacher.pth / its full checkpoint (masked_embed in the backbone)
        'ibot_teacher': {'state_dict': {**t_sd, 'masked_embed': torch.zeros(C)}},
        'ibot_full': {'teacher': {**{'backbone.' + k: v for k, v in t_sd.items()},
                                  'backbone.masked_embed': torch.zeros(C), **head},
                      'student': {'module.backbone.' + k: v for k, v in s_sd.items()}},
        'ddp_flat': {'module.' + k: v for k, v in t_sd.items()},
    }
    for name, ck in containers.items():
        ours = ours_from(convert_dino_vit(ck))
        assert_same_features(tm_t, ours, img=64)
    ours_s = ours_from(convert_dino_vit(containers['dino_full'], branch='student'))
    assert_same_features(tm_s, ours_s, img=64)
    assert_same_features(tm_s, ours_from(convert_dino_vit(containers['ibot_full'], branch='student')), 64)


def test_cotap_layout_split_and_backbone_selection():
    w1, w2 = torch.ones(2), torch.zeros(2)
    sd = {'backbone.cls_token': w1, 'teacher.backbone.cls_token': w2, 'neck.p': w1,
          'teacher.neck.p': w2, 'teacher_initialized': torch.tensor(True)}
    t, _ = split_checkpoint({'state_dict': sd}, branch='teacher')
    s, dropped = split_checkpoint({'state_dict': sd}, branch='student')
    assert list(t) == ['cls_token'] and t['cls_token'] is w2
    assert list(s) == ['cls_token'] and s['cls_token'] is w1
    assert 'teacher.backbone.cls_token' in dropped and 'neck.p' in dropped

    assert default_backbone_prefix(sd) == 'teacher.backbone.'
    assert default_backbone_prefix({'backbone.x': w1, 'head.y': w1}) == 'backbone.'
    out = extract_prefixed(sd, 'teacher.backbone.')
    assert list(out) == ['backbone.cls_token'] and out['backbone.cls_token'] is w2
    assert list(extract_prefixed(sd, 'neck.', out_prefix='n.')) == ['n.p']
    assert key_prefixes(['a.b.c', 'a.b.d', 'x.y', 'z']) == ['a.b (2)', 'x (1)', 'z (1)']
    with pytest.raises(ValueError, match=r"no backbone keys.*'decode_head\.conv \(1\)'"):
        default_backbone_prefix({'decode_head.conv.weight': w1})
    with pytest.raises(ValueError, match="no tensors with prefix 'ema_backbone.'"):
        extract_prefixed(sd, 'ema_backbone.')
    with pytest.raises(ValueError, match='non-empty'):
        extract_prefixed(sd, '')


def test_unpack_timm_swiglu_only_for_packed_blocks():
    plain = {'blocks.0.mlp.fc1.weight': torch.zeros(64, 32), 'blocks.0.mlp.fc2.weight': torch.zeros(32, 64)}
    assert list(unpack_timm_swiglu(plain)) == list(plain)
    packed = {'blocks.0.mlp.fc1.weight': torch.zeros(176, 32), 'blocks.0.mlp.fc1.bias': torch.zeros(176),
              'blocks.0.mlp.fc2.weight': torch.zeros(32, 88), 'blocks.0.norm2.weight': torch.zeros(32)}
    assert list(unpack_timm_swiglu(packed)) == ['blocks.0.mlp.w12.weight', 'blocks.0.mlp.w12.bias',
                                                'blocks.0.mlp.w3.weight', 'blocks.0.norm2.weight']


def test_arch_numbers_for_real_dinov2_sizes():
    """Shapes of the public DINOv2 checkpoints (meta tensors: no memory) -> the right constructor args."""
    def fake(embed, layers, hidden, swiglu):
        sd = {'patch_embed.projection.weight': torch.empty(embed, 3, 14, 14, device='meta'),
              'pos_embed': torch.empty(1, 1 + 37 * 37, embed, device='meta'),
              'ln1.weight': torch.empty(embed, device='meta'),
              'layers.0.attn.gamma1.weight': torch.empty(embed, device='meta')}
        if swiglu:
            sd['layers.0.ffn.w12.weight'] = torch.empty(2 * hidden, embed, device='meta')
            sd['layers.0.ffn.w3.weight'] = torch.empty(embed, hidden, device='meta')
        else:
            sd['layers.0.ffn.layers.0.0.weight'] = torch.empty(hidden, embed, device='meta')
        sd[f'layers.{layers - 1}.ln1.weight'] = torch.empty(embed, device='meta')
        return vit_kwargs_from_arch(infer_vit_arch(sd))

    for name, embed, layers, hidden in [('dinov2-s', 384, 12, 1536), ('dinov2-b', 768, 12, 3072),
                                        ('dinov2-l', 1024, 24, 4096)]:
        kw = fake(embed, layers, hidden, swiglu=False)
        assert kw['arch'] == CoTAPViT.arch_zoo[name], name
        assert (kw['img_size'], kw['patch_size'], kw['layer_scale_init_value']) == (518, 14, 1e-5)
        assert 'layer_cfgs' not in kw
    kw = fake(1536, 40, 4096, swiglu=True)  # ViT-g/14: SwiGLU hidden 4096 <- feedforward_channels 6144
    assert kw['arch'] == CoTAPViT.arch_zoo['dinov2-g'] and kw['layer_cfgs'] == dict(ffn_type='swiglu_fused')
    from mmpretrain.models.backbones.vision_transformer import TransformerEncoderLayer
    with torch.device('meta'):
        layer = TransformerEncoderLayer(1536, 24, 6144, layer_scale_init_value=1e-5, ffn_type='swiglu_fused')
    assert tuple(layer.ffn.w12.weight.shape) == (8192, 1536)
    assert tuple(layer.ffn.w3.weight.shape) == (1536, 4096)
    with pytest.raises(ValueError, match='multiples of 8'):
        fake(32, 2, 85, swiglu=True)

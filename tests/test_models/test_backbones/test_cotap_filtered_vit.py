"""CoTAPFilteredViT: CoTAP's 2C-dim filtered patch features as a (frozen) downstream backbone."""
import copy
import os.path as osp

import pytest
import torch

from cotap_mm.models.backbones import CoTAPFilteredViT
from cotap_test_helpers.cotap_checkpoint import build_tiny_cotap, save_cotap_checkpoint

TINY = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
STUDENT_KEYS = ('backbone', 'neck', 'patch_head', 'cls_head')


def filtered(ckpt=None, prefix='', **kw):
    kw.setdefault('num_prototypes', 4)
    init_cfg = None if ckpt is None else dict(type='Pretrained', checkpoint=str(ckpt), prefix=prefix)
    return CoTAPFilteredViT(arch=dict(TINY), img_size=32, patch_size=8, init_cfg=init_cfg, **kw)


@pytest.fixture(scope='module')
def cotap(tmp_path_factory):
    model = build_tiny_cotap(TINY, img_size=32, patch_size=8, num_prototypes=4)
    path = str(tmp_path_factory.mktemp('filtered_vit') / 'cotap_iter_10.pth')
    save_cotap_checkpoint(model, path)
    return model, path


def teacher_as_student(model):
    """A CoTAP copy whose student holds the teacher's weights (reference for prefix='teacher.')."""
    ref = copy.deepcopy(model)
    for k in STUDENT_KEYS:
        getattr(ref, k).load_state_dict(model.teacher[k].state_dict())
    return ref


@pytest.mark.parametrize('prefix', ['', 'teacher.'])
def test_equals_cotap_extract_feat(cotap, prefix):
    model, path = cotap
    ref_model = model if prefix == '' else teacher_as_student(model)
    bb = filtered(path, prefix)
    bb.init_weights()
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = bb(x)
        ref = ref_model.extract_feat(x)
        other = (teacher_as_student(model) if prefix == '' else model).extract_feat(x)
    assert isinstance(out, tuple) and len(out) == 1
    assert out[0].shape == (2, 2 * TINY['embed_dims'], 4, 6) == ref.shape
    torch.testing.assert_close(out[0], ref, rtol=0, atol=1e-6)
    assert (out[0] - other).abs().max() > 1e-2  # the prefix really picks the branch
    # the weights arrived: every tensor of the branch, by name
    src = torch.load(path, weights_only=True)['state_dict']
    for part in ('backbone', 'neck'):
        for k, v in getattr(bb, part).state_dict().items():
            assert torch.equal(v, src[f'{prefix}{part}.{k}']), (part, k)


def test_not_the_plain_vit_and_registry(cotap):
    from mmseg.registry import MODELS as SEG_MODELS
    model, path = cotap
    bb = SEG_MODELS.build(dict(type='mmpretrain.CoTAPFilteredViT', arch=dict(TINY), img_size=32,
                               patch_size=8, num_prototypes=4,
                               init_cfg=dict(type='Pretrained', checkpoint=path, prefix='')))
    assert isinstance(bb, CoTAPFilteredViT) and bb.out_channels == 64
    bb.init_weights()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        feat = bb(x)[0]
        tokens, hw = bb.backbone.forward_pre_last(x)
        plain = bb.backbone.ln1(bb.backbone.last_block(tokens))[:, 1:]  # plain last-layer tokens
    # first half: LayerNorm(2C) of [ordinary || filtered] -- differs from the plain C-dim tokens
    assert feat.shape[1] == 2 * plain.shape[-1]
    assert not torch.allclose(feat[:, :32].flatten(2).transpose(1, 2), plain, atol=1e-3)
    # per-token LayerNorm(2C) without affine would give zero mean: check with the affine undone
    n = bb.neck.norm_out_patch
    raw = (feat.flatten(2).transpose(1, 2) - n.bias) / n.weight
    torch.testing.assert_close(raw.mean(-1), torch.zeros(1, 16), atol=1e-4, rtol=0)


def test_frozen_by_default(cotap):
    _, path = cotap
    bb = filtered(path)
    bb.init_weights()
    assert not any(p.requires_grad for p in bb.parameters())
    assert bb.train() is bb and not bb.training
    assert not any(m.training for m in bb.modules())
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = bb(x)[0]
    out.square().sum().backward()  # the graph reaches the input only
    assert x.grad is not None and all(p.grad is None for p in bb.parameters())

    free = filtered(path, frozen=False)
    free.init_weights()
    free.train()
    assert free.training and all(p.requires_grad for p in free.parameters())
    free(x)[0].square().sum().backward()
    assert free.backbone.pos_embed.grad is not None and free.neck.norm_out_patch.weight.grad.abs().sum() > 0
    # the prototypes are used detached (as in CoTAP): no gradient reaches them
    assert free.neck.prototypes.grad is None


def test_missing_neck_keys(tmp_path, cotap):
    model, _ = cotap
    # a backbone-only checkpoint (what publish_model.py writes without --with-neck)
    path = tmp_path / 'backbone_only.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in model.backbone.state_dict().items()}},
               path)
    bb = filtered(path)
    with pytest.raises(KeyError, match=r'no neck\.\* tensors.*--with-neck'):
        bb.init_weights()
    # the plain probes' prefix: strips backbone. -> no backbone.* left, with a hint
    _, full = cotap
    with pytest.raises(KeyError, match=r"no backbone\.backbone\.\* tensors.*branch prefix"):
        filtered(full, prefix='backbone.').init_weights()


def test_uninitialised_prototypes(tmp_path):
    model = build_tiny_cotap(TINY, img_size=32, patch_size=8, num_prototypes=4,
                             prototypes_initialized=False)
    path = save_cotap_checkpoint(model, str(tmp_path / 'early.pth'))
    for prefix in ('', 'teacher.'):
        with pytest.raises(RuntimeError, match=r'prototypes are not initialised.*'
                           rf'{prefix}neck\.prototypes_initialized is False.*k-means'):
            filtered(path, prefix).init_weights()
    # never loaded: forward refuses (random prototypes would give meaningless features)
    with pytest.raises(RuntimeError, match='not loaded from a CoTAP checkpoint'):
        filtered()(torch.zeros(1, 3, 32, 32))


def test_mismatched_config_and_bad_init_cfg(cotap):
    _, path = cotap
    with pytest.raises(RuntimeError,
                       match=r'(?s)neck\.\* does not fit.*num_prototypes.*size mismatch for prototypes'):
        filtered(path, num_prototypes=8).init_weights()
    bb = CoTAPFilteredViT(arch=dict(TINY), img_size=32, patch_size=8, num_prototypes=4,
                          init_cfg=dict(type='Pretrained', checkpoint=path, prefx='teacher.'))
    with pytest.raises(ValueError, match=r"unknown keys \['prefx'\]"):
        bb.init_weights()
    with pytest.raises(FileNotFoundError):
        filtered(osp.join(osp.dirname(path), 'missing.pth')).init_weights()
    with pytest.raises(ValueError, match='embed_dims'):
        CoTAPFilteredViT(arch=dict(TINY), neck_cfg=dict(embed_dims=8))


def test_pos_embed_resized_to_img_size(cotap):
    """A larger img_size: mmpretrain's load hook resizes the checkpoint's 4x4 pos-embed (bicubic)."""
    from mmpretrain.models.utils import resize_pos_embed
    model, path = cotap
    bb = CoTAPFilteredViT(arch=dict(TINY), img_size=64, patch_size=8, num_prototypes=4,
                          init_cfg=dict(type='Pretrained', checkpoint=path, prefix=''))
    bb.init_weights()
    ref = resize_pos_embed(model.backbone.pos_embed, (4, 4), (8, 8), mode='bicubic',
                           num_extra_tokens=1)
    torch.testing.assert_close(bb.backbone.pos_embed, ref)

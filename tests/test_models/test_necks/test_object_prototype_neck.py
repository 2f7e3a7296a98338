
import pytest
import torch
import torch.nn.functional as F

from cotap_mm.models.backbones.cotap_vit import CoTAPViT
from cotap_mm.models.necks.object_prototype_neck import ObjectPrototypeNeck
from cotap_mm.models.necks.prototype_ops import (kmeans_prototypes, pool_bank_samples,
                                                 prototype_conv_scores)
from cotap_test_helpers.released_cotap import ReleasedBlock

TINY = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)


def brute_scores(q, k):
    B, H, h, w, d = q.shape
    M, _, K, _, _ = k.shape
    r = K // 2
    out = torch.zeros(B, H, h * w, M, dtype=torch.float64)
    for b in range(B):
        for hd in range(H):
            for y in range(h):
                for x in range(w):
                    for m in range(M):
                        s = 0.0
                        for dy in range(K):
                            for dx in range(K):
                                yy, xx = y + dy - r, x + dx - r
                                if 0 <= yy < h and 0 <= xx < w:
                                    s += float(q[b, hd, yy, xx] @ k[m, hd, dy, dx])
                        out[b, hd, y * w + x, m] = s
    return out


@pytest.mark.parametrize('K', [1, 3, 5])
def test_prototype_conv_scores_brute_force(K):
    g = torch.Generator().manual_seed(K)
    q = torch.randn(2, 2, 4, 5, 3, generator=g, dtype=torch.float64)
    k = torch.randn(3, 2, K, K, 3, generator=g, dtype=torch.float64)
    out = prototype_conv_scores(q, k)
    assert out.shape == (2, 2, 20, 3)
    torch.testing.assert_close(out, brute_scores(q, k))


def test_prototype_conv_scores_errors():
    q = torch.randn(1, 2, 3, 3, 4)
    with pytest.raises(ValueError, match='heads/head_dim'):
        prototype_conv_scores(q, torch.randn(5, 3, 3, 3, 4))
    with pytest.raises(ValueError, match='square and odd'):
        prototype_conv_scores(q, torch.randn(5, 2, 2, 2, 4))
    with pytest.raises(ValueError, match='q must be'):
        prototype_conv_scores(q[0], torch.randn(5, 2, 3, 3, 4))


def _setup(B=2, hw=(4, 3), M=5):
    torch.manual_seed(0)
    vit = CoTAPViT(arch=TINY, img_size=64)
    neck = ObjectPrototypeNeck(embed_dims=32, num_prototypes=M)
    with torch.no_grad():  # non-trivial LayerNorm affine of the new norms
        for p in neck.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(B, 3, hw[0] * 16, hw[1] * 16)
    return vit, neck, x


def test_neck_shapes_and_defaults():
    vit, neck, x = _setup()
    tokens, hw = vit.forward_pre_last(x)
    cls, patches = neck(tokens, hw, vit.last_block)
    assert cls.shape == (2, 64) and patches.shape == (2, 12, 64)
    assert neck.out_channels == 64
    assert ObjectPrototypeNeck(32).scale == pytest.approx(1 / 8)
    assert ObjectPrototypeNeck(32).prototypes.shape == (64, 32, 3, 3)
    assert ObjectPrototypeNeck(32, num_prototypes=16, scale=0.5).scale == 0.5
    sd = neck.state_dict()
    assert 'prototypes_initialized' in sd and sd['prototypes_initialized'].dtype == torch.bool
    assert not bool(sd['prototypes_initialized'])


def _released_last_block(vit, neck, layer_scale):
    """The released last block (independent port) carrying our block's and filter's weights."""
    blk = vit.last_block
    C = vit.embed_dims
    ref = ReleasedBlock(C, vit.num_heads, blk.ffn.layers[0][0].out_features, filtered=True,
                        layer_scale=layer_scale)
    pairs = {'norm1': blk.ln1, 'norm2': blk.ln2, 'attn.qkv': blk.attn.qkv,
             'attn.proj': blk.attn.proj, 'mlp.fc1': blk.ffn.layers[0][0],
             'mlp.fc2': blk.ffn.layers[1], 'norm_in': neck.norm_in,
             'norm_out_patch': neck.norm_out_patch, 'norm_out_cls': neck.norm_out_cls}
    with torch.no_grad():
        for name, src in pairs.items():
            dst = ref.get_submodule(name)
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
        if layer_scale:
            ref.gamma1.copy_(blk.attn.gamma1.weight)
            ref.gamma2.copy_(blk.ffn.gamma2.weight)
    return ref


@pytest.mark.parametrize('layer_scale,drop_path', [(0.0, 0.0), (0.3, 0.0), (0.0, 0.3),
                                                   (0.3, 0.3)])
def test_neck_equals_released_filter(layer_scale, drop_path):
    """The filter equals the released ``Block.forward_kernel`` (port in cotap_test_helpers), patches
    and CLS, with layer scale and drop path off and on (eval mode)."""
    torch.manual_seed(0)
    vit = CoTAPViT(arch=TINY, img_size=64, layer_scale_init_value=layer_scale,
                   drop_path_rate=drop_path)
    neck = ObjectPrototypeNeck(embed_dims=32, num_prototypes=5)
    vit.eval()
    neck.eval()
    with torch.no_grad():  # non-trivial affine parameters and layer scales
        for p in list(neck.parameters()) + list(vit.last_block.parameters()):
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    ref = _released_last_block(vit, neck, layer_scale).eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        tokens, hw = vit.forward_pre_last(x)
        cls, patches = neck(tokens, hw, vit.last_block)
        y, _ = ref(tokens)
        ref_cls = ref.filter_cls(y, neck.prototypes)
        ref_patch = ref.filter_patches(y, neck.prototypes, hw)  # a 4 x 3 grid
        # the reading that feeds the tokens entering the block to the filter is not the release
        wrong = ref.filter_patches(tokens, neck.prototypes, hw)
    torch.testing.assert_close(cls, ref_cls, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(patches, ref_patch, atol=1e-5, rtol=1e-5)
    assert (wrong - patches).abs().max() > 1e-2


def test_no_grad_to_prototypes_but_to_everything_else():
    vit, neck, x = _setup()
    tokens, hw = vit.forward_pre_last(x)
    cls, patches = neck(tokens, hw, vit.last_block)
    (cls.pow(2).sum() + (patches * torch.randn_like(patches)).sum()).backward()
    assert neck.prototypes.grad is None
    for name in ['norm_in.weight', 'norm_in.bias', 'norm_out_patch.weight', 'norm_out_cls.weight']:
        g = dict(neck.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name
    for name, p in vit.last_block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert vit.cls_token.grad is not None


def test_neck_input_errors():
    vit, neck, x = _setup()
    tokens, hw = vit.forward_pre_last(x)
    with pytest.raises(ValueError, match='expected 1 \\+ h\\*w'):
        neck(tokens, (3, 3), vit.last_block)
    with pytest.raises(ValueError, match='tokens_pre_last must be'):
        neck(tokens[..., :16], hw, vit.last_block)
    with pytest.raises(ValueError, match='kernel_size'):
        ObjectPrototypeNeck(32, kernel_size=2)
    with pytest.raises(ValueError, match='bank must be'):
        neck.init_prototypes_(torch.randn(10, 32, 2, 2))


def test_registry_build():
    from mmpretrain.registry import MODELS
    neck = MODELS.build(dict(type='ObjectPrototypeNeck', embed_dims=32, num_prototypes=8))
    assert isinstance(neck, ObjectPrototypeNeck)


# ----------------------------------------------------------------------------- k-means
def _clusters(num=4, per=30, C=8, K=3, noise=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(num, C * K * K, generator=g), dim=1)
    pts = centres.repeat_interleave(per, 0) + noise * torch.randn(num * per, C * K * K, generator=g)
    scale = torch.rand(num * per, 1, generator=g) * 3 + 0.5  # magnitude must not matter
    return centres, (pts * scale).reshape(num * per, C, K, K)


@pytest.mark.parametrize('seed', [0, 1, 2, 3, 4])
def test_kmeans_recovers_separated_clusters(seed):
    centres, bank = _clusters(seed=seed)
    out = kmeans_prototypes(bank, 4, iters=100, seed=seed, init='kmeans++')
    assert out.shape == (4, 8, 3, 3)
    flat = out.reshape(4, -1)
    torch.testing.assert_close(flat.norm(dim=1), torch.ones(4))
    cos = flat @ centres.t()  # [found, true]
    assert (cos.max(dim=0).values > 0.99).all()  # every true cluster has a centre
    assert (cos.max(dim=1).values > 0.99).all()  # every centre sits on a cluster


def test_kmeans_random_init_reseeds_dead_centres():
    a = F.normalize(torch.randn(18), dim=0)
    b = F.normalize(torch.randn(18), dim=0)
    bank = torch.cat([a.repeat(10, 1), b[None]]).reshape(11, 2, 3, 3)
    for seed in range(6):  # most seeds start with both centres on copies of `a`
        out = kmeans_prototypes(bank, 2, iters=20, seed=seed).reshape(2, -1)
        cos = out @ torch.stack([a, b]).t()
        assert (cos.max(dim=0).values > 0.999).all(), seed


def test_kmeans_errors():
    with pytest.raises(ValueError, match='fewer than num_prototypes'):
        kmeans_prototypes(torch.randn(3, 4, 3, 3), 4)
    with pytest.raises(ValueError, match='init'):
        kmeans_prototypes(torch.randn(8, 4, 3, 3), 4, init='foo')


def test_init_prototypes_sets_flag():
    centres, bank = _clusters(C=32, num=8, per=4)
    neck = ObjectPrototypeNeck(embed_dims=32, num_prototypes=8)
    neck.init_prototypes_(bank, iters=50, seed=0, init='kmeans++')
    assert bool(neck.prototypes_initialized)
    assert bool(neck.state_dict()['prototypes_initialized'])
    expected = kmeans_prototypes(bank, 8, iters=50, seed=0, init='kmeans++')
    torch.testing.assert_close(neck.prototypes.data, expected)
    with pytest.raises(ValueError, match='prototypes must have shape'):
        neck.load_prototypes_(torch.randn(4, 32, 3, 3))


def test_pool_bank_samples():
    t = torch.randn(2, 36, 5)
    out = pool_bank_samples(t, (6, 6))
    fmap = t.transpose(1, 2).reshape(2, 5, 6, 6)
    ref = fmap.reshape(2, 5, 3, 2, 3, 2).mean(dim=(3, 5))
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match='does not match'):
        pool_bank_samples(t, (5, 6))

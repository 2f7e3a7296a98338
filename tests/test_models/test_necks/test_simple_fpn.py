import pytest
import torch
import torch.nn.functional as F

from cotap_mm.models.necks import SimpleFPN


def _fpn(in_channels=32, out_channels=16, num_outs=5, **kwargs) -> SimpleFPN:
    torch.manual_seed(0)
    neck = SimpleFPN(in_channels, out_channels, num_outs, **kwargs)
    neck.init_weights()
    return neck


@pytest.mark.parametrize('hw', [(8, 8), (6, 10)])
def test_strides_shapes_channels(hw):
    H, W = hw
    neck = _fpn()
    outs = neck(torch.randn(2, 32, H, W))
    assert len(outs) == 5
    # strides 4, 8, 16, 32 relative to the image = x4, x2, x1, /2 of the stride-16 map; P6: /4 (ceil)
    expected = [(4 * H, 4 * W), (2 * H, 2 * W), (H, W), (H // 2, W // 2),
                (-(-(H // 2) // 2), -(-(W // 2) // 2))]
    for out, (h, w) in zip(outs, expected):
        assert out.shape == (2, 16, h, w)
    # ViTDet's P6 (LastLevelMaxPool): max-pool kernel 1, stride 2 = every other pixel of P5
    torch.testing.assert_close(outs[4], outs[3][:, :, ::2, ::2])


def test_tuple_input_and_num_outs():
    x = torch.randn(1, 32, 8, 8)
    outs4 = _fpn(num_outs=4)((x, ))
    assert [o.shape[-1] for o in outs4] == [32, 16, 8, 4]
    outs6 = _fpn(num_outs=6)([x])
    assert [o.shape[-1] for o in outs6] == [32, 16, 8, 4, 2, 1]
    # same weights (same seed) -> the first four levels agree
    for a, b in zip(outs4, outs6):
        torch.testing.assert_close(a, b)


def test_layernorm_over_channels():
    """Default norm: LayerNorm over channels (ViTDet), so at init (weight 1, bias 0) every output
    position has zero channel mean and unit channel variance."""
    neck = _fpn()
    outs = neck(torch.randn(2, 32, 6, 10) * 3 + 1)
    for out in outs:
        mean = out.mean(dim=1)
        var = out.var(dim=1, unbiased=False)
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0)
        torch.testing.assert_close(var, torch.ones_like(var), atol=1e-2, rtol=0)
    # no conv bias next to a norm (ConvModule bias='auto'), as in ViTDet
    assert all(m.conv.bias is None for m in list(neck.lateral_convs) + list(neck.fpn_convs))


def test_matches_manual_composition_with_bn():
    """With BN (eval) the pyramid equals the documented composition of plain torch ops."""
    neck = _fpn(norm_cfg=dict(type='BN'))
    neck.eval()
    x = torch.randn(1, 32, 4, 6)
    outs = neck(x)
    d1, n1, d2 = neck.fpn1[0], neck.fpn1[1], neck.fpn1[3]
    up4 = F.conv_transpose2d(F.gelu(n1(F.conv_transpose2d(x, d1.weight, d1.bias, stride=2))),
                             d2.weight, d2.bias, stride=2)
    up2 = F.conv_transpose2d(x, neck.fpn2[0].weight, neck.fpn2[0].bias, stride=2)
    down = F.max_pool2d(x, 2, 2)
    for level, feat in enumerate((up4, up2, x, down)):
        lat, out = neck.lateral_convs[level], neck.fpn_convs[level]
        ref = out.norm(F.conv2d(lat.norm(F.conv2d(feat, lat.conv.weight)), out.conv.weight,
                                padding=1))
        torch.testing.assert_close(outs[level], ref, atol=1e-5, rtol=1e-5)


def test_gradients_flow():
    neck = _fpn()
    x = torch.randn(2, 32, 6, 6, requires_grad=True)
    outs = neck(x)
    sum(o.square().mean() * (i + 1) for i, o in enumerate(outs)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in neck.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_bad_inputs():
    neck = _fpn()
    with pytest.raises(ValueError, match='in_channels=32.*16 channels'):
        neck(torch.randn(1, 16, 8, 8))
    with pytest.raises(ValueError, match=r'\[B, C, H, W\]'):
        neck(torch.randn(1, 32, 64))
    with pytest.raises(ValueError, match=r'\[B, C, H, W\]'):
        neck(torch.randn(1, 1, 32, 8, 8))
    with pytest.raises(ValueError, match='sequence of 2 maps'):
        neck((torch.randn(1, 32, 8, 8), torch.randn(1, 32, 8, 8)))
    with pytest.raises(ValueError, match='divisible by 4'):
        SimpleFPN(30)
    with pytest.raises(ValueError, match='num_outs must be >= 4'):
        SimpleFPN(32, num_outs=3)


def test_registered_in_mmdet():
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):  # as in an mmdet config
        neck = MODELS.build(dict(type='SimpleFPN', in_channels=64, out_channels=8, num_outs=5))
    assert isinstance(neck, SimpleFPN)
    assert len(neck(torch.randn(1, 64, 4, 4))) == 5

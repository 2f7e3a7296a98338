"""Tests of SCFSHead (cotap_mm/models/heads/scfs_head.py)."""
import pytest
import torch
import torch.nn.functional as F

import cotap_mm.models.heads.scfs_head  # noqa: F401  (registers SCFSHead)
from mmpretrain.registry import MODELS


def _head(**kw):
    torch.manual_seed(0)
    cfg = dict(type='SCFSHead', in_channels=12, mid_channels=8, hidden_channels=32,
               out_channels=16)
    cfg.update(kw)
    return MODELS.build(cfg)


def test_shapes_and_normalisation():
    head = _head()
    out = head(torch.randn(4, 12, 5, 6))
    assert out.shape == (4, 16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    assert _head(normalize=False)(torch.randn(4, 12, 3, 3)).norm(dim=1).sub(1).abs().max() > 1e-3
    # structure of the official head
    convs = [m for m in head.bottleneck.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (12, 8, (1, 1)), (8, 8, (3, 3)), (8, 12, (1, 1))]
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(12, 32), (32, 16)]
    # default official sizes
    big = MODELS.build(dict(type='SCFSHead', in_channels=512))
    assert big.bottleneck[0].conv.out_channels == 256 and big.mlp[0].out_features == 2048
    assert big.out_channels == 256


def test_residual_identity_path():
    """With the last bottleneck BN set to zero the block is relu(x): out = mlp(GAP(relu(x)))."""
    head = _head().eval()
    bn = head.bottleneck[2].bn
    with torch.no_grad():
        bn.weight.zero_()
        bn.bias.zero_()
    x = torch.randn(3, 12, 4, 4)
    expected = F.normalize(head.mlp(F.relu(x).mean(dim=(2, 3))), dim=1)
    torch.testing.assert_close(head(x), expected)
    # and the bottleneck is really added when it is active
    head2 = _head().eval()
    assert not torch.allclose(head2(x), F.normalize(head2.mlp(F.relu(x).mean((2, 3))), dim=1))


def test_gradients():
    head = _head()
    x = torch.randn(4, 12, 4, 4, requires_grad=True)
    head(x)[:, 0].sum().backward()
    assert x.grad.abs().sum() > 0
    assert head.bottleneck[1].conv.weight.grad.abs().sum() > 0
    assert head.mlp[3].weight.grad.abs().sum() > 0


def test_bad_inputs():
    with pytest.raises(ValueError, match='in_channels'):
        _head(in_channels=0)
    with pytest.raises(ValueError, match='x must be'):
        _head()(torch.randn(4, 12))
    with pytest.raises(ValueError, match='x must be'):
        _head()(torch.randn(4, 7, 3, 3))

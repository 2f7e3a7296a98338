import pytest
import torch

from cotap_mm.models.heads.dino_projection_head import DINOProjectionHead


def _reference(head, x):
    """Straight from the definition: Linear-GELU-Linear-GELU-Linear, L2-normalise, cos to v rows."""
    lins = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    z = x
    for i, lin in enumerate(lins):
        z = z @ lin.weight.t() + (lin.bias if lin.bias is not None else 0)
        if i < len(lins) - 1:
            z = 0.5 * z * (1 + torch.erf(z / 2**0.5))
    z = z / z.norm(dim=-1, keepdim=True)
    v = head.weight_v / head.weight_v.norm(dim=1, keepdim=True)
    return z @ v.t()


def test_forward_matches_reference_and_shapes():
    torch.manual_seed(0)
    head = DINOProjectionHead(12, hidden_channels=16, bottleneck_channels=8, num_prototypes=10)
    x = torch.randn(2, 5, 12)
    out = head(x)
    assert out.shape == (2, 5, 10)
    torch.testing.assert_close(out, _reference(head, x), rtol=1e-5, atol=1e-5)
    assert out.abs().max() <= 1 + 1e-5  # cosines when g = 1
    assert head.weight_g is None
    # MLP: 3 linear layers 12 -> 16 -> 16 -> 8
    lins = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lins] == [(12, 16), (16, 16), (16, 8)]
    assert not any(n.endswith('bias') and 'weight_v' in n for n, _ in head.named_parameters())


def test_weight_norm_scale_invariance_and_learnable_g():
    torch.manual_seed(0)
    head = DINOProjectionHead(6, hidden_channels=8, bottleneck_channels=4, num_prototypes=5)
    x = torch.randn(3, 6)
    out = head(x)
    with torch.no_grad():
        head.weight_v.mul_(7.0)
    torch.testing.assert_close(head(x), out)  # g fixed to 1: scale of v does not matter
    head2 = DINOProjectionHead(6, 8, 4, 5, norm_last_layer=False)
    assert head2.weight_g.shape == (5, 1) and head2.weight_g.requires_grad
    head2(x).sum().backward()
    assert head2.weight_g.grad is not None and head2.weight_v.grad is not None


def test_gradient_reaches_mlp():
    head = DINOProjectionHead(6, 8, 4, 5)
    head(torch.randn(3, 6)).pow(2).sum().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_bad_input():
    head = DINOProjectionHead(6, 8, 4, 5)
    with pytest.raises(ValueError, match='in_channels'):
        head(torch.randn(3, 7))
    with pytest.raises(ValueError, match='num_prototypes'):
        DINOProjectionHead(6, num_prototypes=0)
    with pytest.raises(ValueError, match='num_layers'):
        DINOProjectionHead(6, num_layers=0)

import math

import pytest
import torch

import cotap_mm  # noqa: F401
from cotap_mm.models.losses import ClsClusterLoss
from cotap_mm.models.losses.functional import cross_view_code_loss, soft_cross_entropy
from mmpretrain.registry import MODELS


def _codes(G, B, K, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(G, B, K, generator=g) * 3, dim=-1)


def _loop_reference(s, q, T, s_ids, t_ids):
    total, n = 0.0, 0
    for ti, t in enumerate(t_ids):
        for si, c in enumerate(s_ids):
            if c == t:
                continue
            pair = 0.0
            for b in range(s.shape[1]):
                z = [x / T for x in s[si, b].tolist()]
                lse = math.log(sum(math.exp(v) for v in z))
                pair += -sum(qk * (zk - lse) for qk, zk in zip(q[ti, b].tolist(), z))
            total += pair / s.shape[1]
            n += 1
    return total / n


def test_cross_view_matches_loops():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 3, 6, generator=g)
    q = _codes(2, 3, 6, 1)
    out = cross_view_code_loss(s, q, 0.1)
    assert out.dtype == torch.float32 and out.dim() == 0
    assert out.item() == pytest.approx(_loop_reference(s, q, 0.1, range(4), range(2)), rel=1e-5)
    # explicit crop ids: code view 1 is crop 3 -> pairs (0,*) skip crop 0, (3,*) skip crop 3
    out = cross_view_code_loss(s, q, 0.2, [0, 1, 2, 3], [0, 3])
    assert out.item() == pytest.approx(_loop_reference(s, q, 0.2, [0, 1, 2, 3], [0, 3]), rel=1e-5)


def test_soft_cross_entropy_mask_and_empty():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(5, 4, generator=g, requires_grad=True)
    q = torch.softmax(torch.randn(5, 4, generator=g), -1)
    mask = torch.tensor([True, False, True, False, False])
    full = -(q * torch.log_softmax(s / 0.1, -1)).sum(-1)
    assert soft_cross_entropy(s, q, 0.1, mask).item() == pytest.approx(full[mask].mean().item())
    zero = soft_cross_entropy(s, q, 0.1, torch.zeros(5, dtype=torch.bool))
    assert zero.item() == 0.0 and zero.requires_grad
    with pytest.raises(ValueError, match='mask'):
        soft_cross_entropy(s, q, 0.1, mask[:3])
    with pytest.raises(ValueError, match='same shape'):
        soft_cross_entropy(s, q[:, :3])


def test_module_weight_gradients_and_registry():
    loss = MODELS.build(dict(type='ClsClusterLoss', student_temp=0.1, loss_weight=0.5))
    assert isinstance(loss, ClsClusterLoss)
    g = torch.Generator().manual_seed(3)
    s = torch.randn(4, 3, 6, generator=g, requires_grad=True)
    q = _codes(2, 3, 6, 4).requires_grad_(True)
    out = loss(s, q)
    assert out.item() == pytest.approx(0.5 * cross_view_code_loss(s, q, 0.1).item(), rel=1e-6)
    out.backward()
    assert s.grad.abs().sum() > 0 and q.grad is None  # codes are targets (detached)
    # minimised by matching the targets: predictions equal to the (shared) code score lower
    q_same = _codes(1, 3, 6, 5).expand(2, 3, 6)
    good = cross_view_code_loss((q_same[0].log() * 0.1).expand(4, 3, 6), q_same, 0.1)
    bad = cross_view_code_loss(torch.zeros(4, 3, 6), q_same, 0.1)
    assert good < bad


def test_bad_inputs():
    with pytest.raises(ValueError, match='student_temp'):
        ClsClusterLoss(student_temp=0)
    with pytest.raises(ValueError, match=r'\[V, B, K\]'):
        cross_view_code_loss(torch.zeros(2, 3), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match='agree'):
        cross_view_code_loss(torch.zeros(2, 3, 4), torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match='no \\(student, code\\) pair'):
        cross_view_code_loss(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4))

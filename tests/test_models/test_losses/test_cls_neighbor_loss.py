import math

import pytest
import torch

import cotap_mm  # noqa: F401
from cotap_mm.models.losses import ClsNeighborLoss
from cotap_mm.models.losses.functional import neighbor_code_loss
from mmpretrain.registry import MODELS


def _loop_reference(s, q, partner, T):
    V, B, _ = s.shape
    G = q.shape[0]
    total = 0.0
    for u in range(B):
        for c in range(V):
            z = [x / T for x in s[c, u].tolist()]
            lse = math.log(sum(math.exp(v) for v in z))
            for t in range(G):
                total += -sum(qk * (zk - lse) for qk, zk in zip(q[t, partner[u]].tolist(), z))
    return total / (B * V * G)


def test_matches_loops_with_symmetric_partners():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 4, 5, generator=g)
    q = torch.softmax(torch.randn(2, 4, 5, generator=g) * 2, -1)
    partner = torch.tensor([1, 0, 3, 2])  # [anchor, neighbour] groups, pointing to each other
    out = neighbor_code_loss(s, q, partner, 0.2)
    assert out.item() == pytest.approx(_loop_reference(s, q, partner.tolist(), 0.2), rel=1e-5)
    # asymmetric (retrieved) partners
    partner = torch.tensor([2, 2, 0, 1])
    out = neighbor_code_loss(s, q, partner, 0.2)
    assert out.item() == pytest.approx(_loop_reference(s, q, partner.tolist(), 0.2), rel=1e-5)


def test_targets_are_the_partners_codes():
    # anchor predictions equal to the partner's codes beat predictions of their own codes
    q = torch.softmax(torch.randn(1, 2, 6, generator=torch.Generator().manual_seed(1)) * 3, -1)
    q = q.expand(2, 2, 6)
    partner = torch.tensor([1, 0])
    own = (q[0].log() * 0.2).expand(3, 2, 6)
    swapped = (q[0, partner].log() * 0.2).expand(3, 2, 6)
    assert neighbor_code_loss(swapped, q, partner, 0.2) < neighbor_code_loss(own, q, partner, 0.2)


def test_module_weight_gradients_and_errors():
    loss = MODELS.build(dict(type='ClsNeighborLoss', loss_weight=2.0))
    assert isinstance(loss, ClsNeighborLoss) and loss.student_temp == 0.2
    g = torch.Generator().manual_seed(2)
    s = torch.randn(3, 4, 5, generator=g, requires_grad=True)
    q = torch.softmax(torch.randn(2, 4, 5, generator=g), -1).requires_grad_(True)
    partner = torch.tensor([1, 0, 3, 2])
    out = loss(s, q, partner)
    assert out.item() == pytest.approx(2 * neighbor_code_loss(s, q, partner, 0.2).item())
    out.backward()
    assert s.grad.abs().sum() > 0 and q.grad is None
    with pytest.raises(ValueError, match='partner'):
        loss(s, q, torch.tensor([1, 0, 4, 2]))
    with pytest.raises(ValueError, match='partner'):
        loss(s, q, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match='student_temp'):
        ClsNeighborLoss(student_temp=-1)

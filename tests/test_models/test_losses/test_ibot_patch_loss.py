import math

import pytest
import torch

from cotap_mm.models.losses.ibot_patch_loss import IBOTPatchLoss, ibot_patch_cross_entropy


def _reference(s, t, c, w, ts, tt):
    """Loop over views, samples and tokens (iBOT's formula)."""
    V, B, N, K = s.shape
    total = 0.0
    for v in range(V):
        per_view = 0.0
        for b in range(B):
            num, den = 0.0, 0.0
            for n in range(N):
                p = torch.softmax((t[v, b, n] - c) / tt, dim=0)
                logq = torch.log_softmax(s[v, b, n] / ts, dim=0)
                num += float(w[v, b, n]) * float(-(p * logq).sum())
                den += float(w[v, b, n])
            per_view += num / max(den, 1.0)
        total += per_view / B
    return total / V


def test_matches_brute_force_and_ignores_unweighted_tokens():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 5, 7, generator=g)
    t = torch.randn(2, 3, 5, 7, generator=g)
    c = torch.randn(7, generator=g) * 0.1
    w = torch.rand(2, 3, 5, generator=g) > 0.5
    w[1, 2] = False  # a sample without weighted tokens counts as 0 in the batch mean
    got = ibot_patch_cross_entropy(s, t, c, w, 0.1, 0.05)
    assert math.isclose(float(got), _reference(s, t, c, w, 0.1, 0.05), rel_tol=1e-5)
    # changing student / teacher values at unweighted tokens does not change the loss
    s2, t2 = s.clone(), t.clone()
    s2[~w] = 100.0 * torch.randn(int((~w).sum()), 7, generator=g)
    t2[~w] = -3.0
    assert torch.allclose(ibot_patch_cross_entropy(s2, t2, c, w, 0.1, 0.05), got)
    # and the gradient there is zero, nonzero elsewhere
    s3 = s.clone().requires_grad_(True)
    ibot_patch_cross_entropy(s3, t, c, w, 0.1, 0.05).backward()
    assert torch.all(s3.grad[~w] == 0)
    assert torch.all(s3.grad[w].abs().sum(-1) > 0)
    # float weights are allowed
    wf = torch.rand(2, 3, 5, generator=g)
    assert math.isclose(float(ibot_patch_cross_entropy(s, t, c, wf)),
                        _reference(s, t, c, wf, 0.1, 0.07), rel_tol=1e-5)


def test_module_centre_temperature_and_weight():
    loss = IBOTPatchLoss(out_dim=4, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_iters=2,
                         center_momentum=0.5, loss_weight=2.0)
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(1, 2, 3, 4, generator=g), torch.randn(1, 2, 3, 4, generator=g)
    w = torch.ones(1, 2, 3, dtype=torch.bool)
    loss.train()
    # no update: same value twice, centre and counter unchanged
    a = loss(s, t, w, update_center=False)
    assert torch.equal(loss.center, torch.zeros(1, 4)) and int(loss.num_updates) == 0
    assert math.isclose(float(a), 2.0 * _reference(s, t, torch.zeros(4), w, 0.1, 0.04),
                        rel_tol=1e-5)
    assert math.isclose(float(loss.cross_entropy(s, t, w)), float(a) / 2.0, rel_tol=1e-6)
    loss(s, t, w)
    assert torch.allclose(loss.center, 0.5 * t.reshape(-1, 4).mean(0, keepdim=True))
    assert int(loss.num_updates) == 1
    assert math.isclose(loss.current_teacher_temp(), 0.055)
    loss(s, t, w)
    assert math.isclose(loss.current_teacher_temp(), 0.07)
    loss.step(t)  # the updates alone
    assert int(loss.num_updates) == 3
    assert torch.allclose(loss.center, 0.875 * t.reshape(-1, 4).mean(0, keepdim=True))
    loss.eval()
    before = loss.center.clone()
    loss(s, t, w)
    loss.step(t)
    assert torch.equal(loss.center, before) and int(loss.num_updates) == 3


def test_bad_inputs():
    with pytest.raises(ValueError, match='out_dim'):
        IBOTPatchLoss(out_dim=0)
    with pytest.raises(ValueError, match='center_momentum'):
        IBOTPatchLoss(center_momentum=2.0)
    with pytest.raises(ValueError, match='warmup_iters'):
        IBOTPatchLoss(warmup_iters=-3)
    loss = IBOTPatchLoss(out_dim=4)
    with pytest.raises(ValueError, match='out_dim=4'):
        loss(torch.zeros(1, 1, 2, 5), torch.zeros(1, 1, 2, 5), torch.ones(1, 1, 2))
    with pytest.raises(ValueError, match='weights'):
        ibot_patch_cross_entropy(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4), torch.zeros(4),
                                 torch.ones(1, 2))
    with pytest.raises(ValueError, match='V, B, N, K'):
        ibot_patch_cross_entropy(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), torch.zeros(4),
                                 torch.ones(1, 2))

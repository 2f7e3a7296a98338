import math

import pytest
import torch

from cotap_mm.models.losses.dino_cls_loss import (DINOClsLoss, dino_distributions,
                                                  teacher_temperature)
from cotap_mm.models.losses.functional import teacher_collapse_stats


def dino_cross_entropy(s, t, c, ts=0.1, tt=0.07, s_ids=None, t_ids=None):
    """:class:`DINOClsLoss` with a given centre, no warm-up, in eval mode (no centre update)."""
    loss = DINOClsLoss(out_dim=s.shape[-1], student_temp=ts, teacher_temp=tt,
                       warmup_teacher_temp=tt, warmup_iters=0).eval()
    loss.center.copy_(torch.as_tensor(c).reshape(1, -1))
    return loss(s, t, s_ids, t_ids)


def _brute(s, t, c, ts, tt, s_ids, t_ids):
    Vs, B, K = s.shape
    total, n = 0.0, 0
    for a, t_id in enumerate(t_ids):
        for b, s_id in enumerate(s_ids):
            if s_id == t_id:
                continue
            for i in range(B):
                tl = [(t[a, i, k].item() - c[k].item()) / tt for k in range(K)]
                mt = max(tl)
                zt = sum(math.exp(v - mt) for v in tl)
                p = [math.exp(v - mt) / zt for v in tl]
                sl = [s[b, i, k].item() / ts for k in range(K)]
                ms = max(sl)
                lse = ms + math.log(sum(math.exp(v - ms) for v in sl))
                total += -sum(p[k] * (sl[k] - lse) for k in range(K)) / B
            n += 1
    return total / n


def test_matches_brute_force():
    torch.manual_seed(0)
    s, t, c = torch.randn(4, 3, 5), torch.randn(2, 3, 5), torch.randn(5)
    got = dino_cross_entropy(s, t, c, 0.1, 0.05, [0, 1, 2, 3], [0, 1])
    assert math.isclose(got.item(), _brute(s, t, c, 0.1, 0.05, [0, 1, 2, 3], [0, 1]),
                        rel_tol=1e-4)
    # other pairing: teacher views of crops 2 and 0
    got = dino_cross_entropy(s, t, c, 0.2, 0.04, None, [2, 0])
    assert math.isclose(got.item(), _brute(s, t, c, 0.2, 0.04, range(4), [2, 0]), rel_tol=1e-4)


def test_gradient_only_to_student():
    s = torch.randn(3, 2, 4, requires_grad=True)
    t = torch.randn(2, 2, 4, requires_grad=True)
    dino_cross_entropy(s, t, torch.zeros(4)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_center_update_and_warmup():
    torch.manual_seed(0)
    loss = DINOClsLoss(out_dim=4, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_iters=2,
                       center_momentum=0.9)
    t1, t2 = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    s = torch.randn(3, 3, 4)
    assert loss.current_teacher_temp() == pytest.approx(0.04)
    expected = dino_cross_entropy(s, t1, torch.zeros(4), 0.1, 0.04)
    torch.testing.assert_close(loss(s, t1), expected)
    torch.testing.assert_close(loss.center, 0.1 * t1.reshape(-1, 4).mean(0, keepdim=True))
    assert loss.current_teacher_temp() == pytest.approx(0.055)
    c1 = loss.center.clone()
    loss(s, t2)
    torch.testing.assert_close(loss.center, 0.9 * c1 + 0.1 * t2.reshape(-1, 4).mean(0, keepdim=True))
    assert loss.current_teacher_temp() == pytest.approx(0.07)
    assert teacher_temperature(100, 0.07, 0.04, 10) == pytest.approx(0.07)
    # eval mode: no centre update
    loss.eval()
    c2 = loss.center.clone()
    loss(s, t1)
    torch.testing.assert_close(loss.center, c2)


def test_bad_input():
    with pytest.raises(ValueError, match='views, B, K'):
        dino_cross_entropy(torch.randn(3, 4), torch.randn(2, 3, 4), torch.zeros(4))
    with pytest.raises(ValueError, match='no \\(student, teacher\\) pair'):
        dino_cross_entropy(torch.randn(1, 2, 4), torch.randn(1, 2, 4), torch.zeros(4))
    with pytest.raises(ValueError, match='out_dim'):
        DINOClsLoss(out_dim=4)(torch.randn(2, 2, 5), torch.randn(2, 2, 5))
    with pytest.raises(ValueError, match='center_momentum'):
        DINOClsLoss(out_dim=4, center_momentum=1.5)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match='warmup_iters'):
            DINOClsLoss(out_dim=4, warmup_iters=bad)


def _entropy(p):
    return -sum(v * math.log(v) for v in p if v > 0)


def _cross_entropy(t, s_logp, pairs):
    """The unweighted DINO loss by hand: mean over pairs of the batch-mean -sum t log s."""
    B, K = t.shape[1:]
    return torch.tensor(sum(-sum(t[a, i, k].item() * s_logp[b, i, k].item() for k in range(K)) / B
                            for a, b in pairs for i in range(B)) / len(pairs))


def _stats(t, s_logp, pairs):
    return teacher_collapse_stats(t, pairs, _cross_entropy(t, s_logp, pairs))


def test_collapse_stats_match_hand_computation():
    torch.manual_seed(1)
    t = torch.softmax(torch.randn(2, 3, 4) * 2, -1)
    s = torch.log_softmax(torch.randn(3, 3, 4), -1)
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]
    got = _stats(t, s, pairs)
    rows = [[t[v, i, k].item() for k in range(4)] for v in range(2) for i in range(3)]
    assert got['teacher_entropy'].item() == pytest.approx(sum(map(_entropy, rows)) / 6, rel=1e-5)
    marginal = [sum(r[k] for r in rows) / 6 for k in range(4)]
    assert got['teacher_marginal_entropy'].item() == pytest.approx(_entropy(marginal), rel=1e-5)
    kl = [sum(t[a, i, k].item() * (math.log(t[a, i, k].item()) - s[b, i, k].item())
              for k in range(4)) / 3 for a, b in pairs for i in range(3)]
    assert got['kl'].item() == pytest.approx(sum(kl) / len(pairs), rel=1e-5)


def test_collapse_stats_tell_the_two_collapses_apart():
    """DINO Sec. 5.3: uniform collapse -> entropy ln K; one-dimension collapse -> 0 and 0."""
    K, B = 8, 16
    log_uniform = torch.full((2, B, K), -math.log(K))
    uniform = _stats(log_uniform.exp(), log_uniform, [(0, 1), (1, 0)])
    assert uniform['teacher_entropy'].item() == pytest.approx(math.log(K))
    assert uniform['teacher_marginal_entropy'].item() == pytest.approx(math.log(K))
    assert uniform['kl'].item() == pytest.approx(0.0, abs=1e-6)
    one_dim = torch.zeros(2, B, K)
    one_dim[..., 3] = 1.0
    dim_stats = _stats(one_dim, log_uniform, [(0, 1), (1, 0)])
    assert dim_stats['teacher_entropy'].item() == pytest.approx(0.0, abs=1e-6)
    assert dim_stats['teacher_marginal_entropy'].item() == pytest.approx(0.0, abs=1e-6)
    # healthy: every sample confident, samples spread over all prototypes
    healthy = torch.eye(K).repeat(2, B // K, 1)
    ok = _stats(healthy, log_uniform, [(0, 1), (1, 0)])
    assert ok['teacher_entropy'].item() == pytest.approx(0.0, abs=1e-6)
    assert ok['teacher_marginal_entropy'].item() == pytest.approx(math.log(K))
    assert ok['kl'].item() == pytest.approx(math.log(K))  # the uniform student is far from it


def test_loss_module_keeps_collapse_stats_of_training_batches():
    torch.manual_seed(0)
    loss = DINOClsLoss(out_dim=4, teacher_temp=0.05)
    assert loss.last_stats == {}
    s, t = torch.randn(3, 5, 4), torch.randn(2, 5, 4)
    loss(s, t)
    t_prob = torch.softmax(t / 0.05, -1)  # the centre was still 0
    s_logp, pairs = torch.log_softmax(s / 0.1, -1), [(0, 1), (0, 2), (1, 0), (1, 2)]
    marginal = t_prob.reshape(-1, 4).mean(0)
    expected = dict(  # written out independently of teacher_collapse_stats
        teacher_entropy=-(t_prob * t_prob.log()).sum(-1).mean(),
        teacher_marginal_entropy=-(marginal * marginal.log()).sum(),
        kl=torch.stack([(t_prob[a] * (t_prob[a].log() - s_logp[b])).sum(-1).mean()
                        for a, b in pairs]).mean())
    assert set(loss.last_stats) == set(expected)
    for key, val in expected.items():
        torch.testing.assert_close(loss.last_stats[key], val)
    before = {k: v.clone() for k, v in loss.last_stats.items()}
    loss.eval()
    loss(torch.randn(3, 5, 4), torch.randn(2, 5, 4))  # evaluation batches are not recorded
    assert all(torch.equal(before[k], loss.last_stats[k]) for k in before)


def _numpy_sinkhorn(scores, eps, iters):
    """SwAV / DINOv2 Sinkhorn-Knopp, written out independently in numpy."""
    import numpy as np
    q = np.exp((scores - scores.max()) / eps).T  # [K, N]
    q /= q.sum()
    K, N = q.shape
    for _ in range(iters):
        q /= q.sum(axis=1, keepdims=True)
        q /= K
        q /= q.sum(axis=0, keepdims=True)
        q /= N
    return (q * N).T


def test_sinkhorn_knopp_centering_matches_numpy_reference():
    import numpy as np
    torch.manual_seed(2)
    s, t = torch.randn(4, 6, 5), torch.randn(2, 6, 5) * 0.3
    loss = DINOClsLoss(out_dim=5, teacher_temp=0.05, centering='sinkhorn_knopp', sinkhorn_iters=3)
    got = loss(s, t)
    q = torch.from_numpy(_numpy_sinkhorn(t.reshape(12, 5).double().numpy(), 0.05, 3)).float()
    q = q.reshape(2, 6, 5)
    logp = torch.log_softmax(s / 0.1, -1)
    expected = torch.stack([-(q[a] * logp[b]).sum(-1).mean() for a in range(2) for b in range(4)
                            if a != b]).mean()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(loss.center, torch.zeros(1, 5))  # no EMA centre in this mode
    assert int(loss.num_updates) == 1
    # with enough iterations the targets use every prototype equally over the batch
    q = _numpy_sinkhorn(t.reshape(12, 5).double().numpy(), 0.05, 50)
    np.testing.assert_allclose(q.sum(axis=0), np.full(5, 12 / 5), rtol=1e-3)


def test_bad_centering():
    with pytest.raises(ValueError, match='centering'):
        DINOClsLoss(out_dim=4, centering='mean')
    with pytest.raises(ValueError, match='sinkhorn_iters'):
        DINOClsLoss(out_dim=4, centering='sinkhorn_knopp', sinkhorn_iters=0)
    with pytest.raises(ValueError, match='centering'):
        dino_distributions(torch.randn(2, 2, 4), torch.randn(2, 2, 4), torch.zeros(4),
                           centering='batch')

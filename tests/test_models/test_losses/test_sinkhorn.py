import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cotap_mm.models.losses.functional import mean_code_entropy, sinkhorn_knopp


def _reference(scores: np.ndarray, eps: float, iters: int) -> np.ndarray:
    """Element-by-element float64 loop of SwAV's Sinkhorn-Knopp (Q is K x N)."""
    N, K = scores.shape
    Q = [[math.exp(scores[n, k] / eps) for n in range(N)] for k in range(K)]
    total = sum(sum(row) for row in Q)
    Q = [[q / total for q in row] for row in Q]
    for _ in range(iters):
        for k in range(K):
            r = sum(Q[k])
            Q[k] = [q / r / K for q in Q[k]]
        for n in range(N):
            c = sum(Q[k][n] for k in range(K))
            for k in range(K):
                Q[k][n] = Q[k][n] / c / N
    return np.array([[Q[k][n] * N for k in range(K)] for n in range(N)])


@pytest.mark.parametrize('iters', [1, 3])
def test_matches_loop_reference(iters):
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(7, 5, generator=g) * 2 - 1
    codes = sinkhorn_knopp(scores, epsilon=0.3, iters=iters)
    ref = _reference(scores.double().numpy(), 0.3, iters)
    assert codes.dtype == torch.float32 and codes.shape == (7, 5)
    np.testing.assert_allclose(codes.numpy(), ref, rtol=1e-5, atol=1e-7)


def test_marginals():
    g = torch.Generator().manual_seed(1)
    N, K = 60, 12
    scores = torch.rand(N, K, generator=g) * 2 - 1
    codes = sinkhorn_knopp(scores, epsilon=0.05, iters=3)
    # rows (samples) are assignments: sum exactly to 1
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(N), rtol=0, atol=1e-5)
    assert bool((codes >= 0).all())
    # columns (prototypes) approach N / K; closer with more iterations
    err3 = (codes.sum(dim=0) - N / K).abs().max()
    many = sinkhorn_knopp(scores, epsilon=0.05, iters=300)
    torch.testing.assert_close(many.sum(dim=0), torch.full((K, ), N / K), rtol=1e-3, atol=1e-3)
    assert (many.sum(dim=0) - N / K).abs().max() < err3
    # equipartition: raw argmax would be unbalanced, codes are far more balanced
    raw = torch.bincount(scores.argmax(1), minlength=K).float()
    assert (codes.sum(0) - N / K).abs().max() < (raw - N / K).abs().max()


def test_stable_and_float32_under_autocast():
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(20, 8, generator=g)
    ref = sinkhorn_knopp(scores, epsilon=0.05)
    # the stabilising max-shift: logits of ~600 (exp overflows float32) give the same codes
    torch.testing.assert_close(sinkhorn_knopp(scores + 30.0, epsilon=0.05), ref, rtol=1e-4,
                               atol=1e-6)
    tiny_eps = sinkhorn_knopp(scores, epsilon=1e-3)
    assert torch.isfinite(tiny_eps).all()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = sinkhorn_knopp(scores.bfloat16(), epsilon=0.05)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.sum(1), torch.ones(20), rtol=0, atol=1e-5)
    assert not out.requires_grad
    assert not sinkhorn_knopp(scores.clone().requires_grad_(True)).requires_grad


def test_empty_and_bad_inputs():
    assert sinkhorn_knopp(torch.zeros(0, 4)).shape == (0, 4)
    with pytest.raises(ValueError, match='scores'):
        sinkhorn_knopp(torch.zeros(3))
    with pytest.raises(ValueError, match='epsilon'):
        sinkhorn_knopp(torch.zeros(3, 2), epsilon=0)
    with pytest.raises(ValueError, match='iters'):
        sinkhorn_knopp(torch.zeros(3, 2), iters=0)


def _worker(rank, world, port, parts, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        out[rank] = sinkhorn_knopp(parts[rank], epsilon=0.1, iters=3)
    finally:
        dist.destroy_process_group()


def test_distributed_equals_joint_problem():
    from cotap_test_helpers.tiny_runs import free_port
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(11, 6, generator=g) * 2 - 1
    parts = [scores[:7], scores[7:]]  # unequal rows per process
    ctx = mp.get_context('fork')
    manager = ctx.Manager()
    out = manager.dict()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, parts, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    joint = sinkhorn_knopp(scores, epsilon=0.1, iters=3)
    torch.testing.assert_close(torch.cat([out[0], out[1]]), joint, rtol=1e-5, atol=1e-7)
    # a process-local solve differs: the all-reduce matters
    assert not torch.allclose(sinkhorn_knopp(parts[0], epsilon=0.1, iters=3), joint[:7])


def test_mean_code_entropy():
    K = 6
    uniform = torch.full((4, K), 1.0 / K)
    assert mean_code_entropy(uniform).item() == pytest.approx(math.log(K))
    one_hot = torch.eye(K)[:4]
    assert mean_code_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    # all-zero items (background cells) are skipped; K along another dimension
    mixed = torch.stack([uniform[0], torch.zeros(K), one_hot[1]])  # [3, K]
    assert mean_code_entropy(mixed).item() == pytest.approx(math.log(K) / 2)
    maps = mixed.t().reshape(1, K, 3, 1)  # [1, K, h=3, w=1]
    assert mean_code_entropy(maps, dim=1).item() == pytest.approx(math.log(K) / 2)
    # one item by hand, unnormalised codes are renormalised
    q = torch.tensor([[2.0, 1.0, 1.0]])
    ref = -sum(p * math.log(p) for p in (0.5, 0.25, 0.25))
    assert mean_code_entropy(q).item() == pytest.approx(ref)
    assert mean_code_entropy(torch.zeros(2, K)).item() == 0.0

"""Tests of the CoTAP loss (``ContinuousAPLoss`` and its pure functions)."""
import math
from typing import List, Optional, Sequence, Tuple

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from cotap_mm.models.losses.continuous_ap_loss import ContinuousAPLoss
from cotap_mm.models.losses.functional.continuous_ap import (anchor_weights,
                                                             continuous_ap_loss,
                                                             continuous_ap_loss_chunked,
                                                             continuous_ap_loss_dense,
                                                             huber_step, huber_step_grad)

IMPLS = ('dense', 'chunked')


# --------------------------------------------------------------------------------------------
# Brute force, written straight from the formula with Python floats and double loops.
# --------------------------------------------------------------------------------------------
def _h(x: float, tau: float) -> float:
    if x < 0:
        return 1 - 2 * x / tau
    if x < tau:
        return (1 - x / tau)**2
    return 0.0


def brute_force_loss(S: Sequence[float],
                     T: Sequence[float],
                     is_random: Optional[Sequence[bool]] = None,
                     tau: float = 0.5,
                     theta: float = -0.2,
                     alpha: float = 0.1,
                     ap_mul: float = 1.0,
                     eps_p: float = 1e-5,
                     eps_w: float = 1e-5,
                     P_fixed: Optional[List[int]] = None) -> Tuple[float, List[int]]:
    """Return (loss, P). ``P_fixed`` holds the counts constant (they carry no gradient)."""
    n = len(S)
    num, den = 0.0, 0.0
    Ps = []
    for i in range(n):
        w = max(T[i] - theta, 0.0)
        if is_random is not None and is_random[i]:
            w *= alpha
        P = 0
        N = 0.0
        for j in range(n):
            if T[j] >= T[i] and S[j] >= S[i]:
                P += 1
            N += max(T[i] - T[j], 0.0) * _h(S[i] - S[j], tau)
        N *= ap_mul
        Ps.append(P)
        if P_fixed is not None:
            P = P_fixed[i]
        r = N / (P + eps_p)
        num += w * r / (1 + r)
        den += w
    return num / (den + eps_w), Ps


def brute_force_grad(S: Sequence[float], T: Sequence[float], is_random=None, step: float = 1e-6,
                     **kw) -> List[float]:
    """Central finite differences of the brute force with the counts P held fixed."""
    _, P = brute_force_loss(S, T, is_random, **kw)
    grad = []
    for k in range(len(S)):
        Sp, Sm = list(S), list(S)
        Sp[k] += step
        Sm[k] -= step
        fp, _ = brute_force_loss(Sp, T, is_random, P_fixed=P, **kw)
        fm, _ = brute_force_loss(Sm, T, is_random, P_fixed=P, **kw)
        grad.append((fp - fm) / (2 * step))
    return grad


def _quantised_inputs(n: int, seed: int, levels: int = 6):
    """Scores and targets on a coarse grid, so that both S and T have many ties."""
    g = torch.Generator().manual_seed(seed)
    S = torch.randint(-levels, levels + 1, (n, ), generator=g).double() * 0.1
    T = torch.randint(-levels, levels + 1, (n, ), generator=g).double() * 0.1
    R = torch.rand(n, generator=g) < 0.4
    return S, T, R


def _loss(impl: str, S, T, R=None, chunk_size: int = 4, **kw):
    if impl == 'dense':
        return continuous_ap_loss_dense(S, T, R, **kw)
    return continuous_ap_loss_chunked(S, T, R, chunk_size=chunk_size, **kw)


def _value_and_grad(impl: str, S, T, R=None, **kw):
    S = S.clone().requires_grad_(True)
    loss = _loss(impl, S, T, R, **kw)
    (grad, ) = torch.autograd.grad(loss, S)
    return loss.detach(), grad


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------
def test_huber_step_pieces_and_derivative():
    tau = 0.5
    x = torch.tensor([-1.0, -0.25, 0.0, 0.1, 0.25, 0.5, 0.7], dtype=torch.float64)
    expected = torch.tensor([1 + 4.0, 1 + 1.0, 1.0, 0.8**2, 0.5**2, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(huber_step(x, tau), expected)
    xg = x.clone().requires_grad_(True)
    (g, ) = torch.autograd.grad(huber_step(xg, tau).sum(), xg)
    torch.testing.assert_close(huber_step_grad(x, tau), g)
    torch.testing.assert_close(
        huber_step_grad(x, tau),
        torch.tensor([-4.0, -4.0, -4.0, -4 * 0.8, -4 * 0.5, 0.0, 0.0], dtype=torch.float64))


def test_anchor_weights():
    T = torch.tensor([0.8, -0.2, -0.5, 0.3])
    R = torch.tensor([False, False, True, True])
    torch.testing.assert_close(anchor_weights(T), torch.tensor([1.0, 0.0, 0.0, 0.5]))
    torch.testing.assert_close(anchor_weights(T, R), torch.tensor([1.0, 0.0, 0.0, 0.05]))
    torch.testing.assert_close(
        anchor_weights(T, R, weight_thres=0.0, alpha=0.5), torch.tensor([0.8, 0.0, 0.0, 0.15]))


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize('impl', IMPLS)
def test_hand_computed_three_items(impl):
    # T = [0.8, 0.3, 0.0], S = [0.1, 0.3, 0.0], item 2 is random, tau 0.5, theta -0.2, alpha 0.1.
    # w = [1.0, 0.5, 0.2 * 0.1 = 0.02]
    # P_0: T_j >= 0.8 -> {0}, S_0 >= 0.1 -> 1.  P_1: T_j >= 0.3 -> {0, 1}, S_j >= 0.3 -> {1} -> 1.
    # P_2: T_j >= 0 -> all, S_j >= 0 -> all -> 3.
    # N_0 = 0.5 * h(0.1 - 0.3 = -0.2) + 0.8 * h(0.1) = 0.5 * 1.8 + 0.8 * 0.64 = 1.412
    # N_1 = 0.3 * h(0.3) = 0.3 * 0.16 = 0.048;  N_2 = 0 (no item with a smaller target).
    # with eps = 0: loss = (1.0 * 1.412 / 2.412 + 0.5 * 0.048 / 1.048 + 0.02 * 0) / 1.52
    S = torch.tensor([0.1, 0.3, 0.0], dtype=torch.float64)
    T = torch.tensor([0.8, 0.3, 0.0], dtype=torch.float64)
    R = torch.tensor([False, False, True])
    expected = (1.412 / 2.412 + 0.5 * 0.048 / 1.048) / 1.52
    loss = _loss(impl, S, T, R, chunk_size=2, eps_p=0.0, eps_w=0.0)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # default epsilons, same case: r = N / (P + 1e-5), l = r / (1 + r), / (sum w + 1e-5)
    r0, r1 = 1.412 / (1 + 1e-5), 0.048 / (1 + 1e-5)
    expected_eps = (r0 / (1 + r0) + 0.5 * r1 / (1 + r1)) / (1.52 + 1e-5)
    assert _loss(impl, S, T, R, chunk_size=2).item() == pytest.approx(expected_eps, rel=1e-12)


@pytest.mark.parametrize('impl', IMPLS)
def test_hand_computed_gradient_two_items(impl):
    # T = [1, 0], S = [s0, s1] with x = s0 - s1 = 0.1 in the quadratic part; eps = 0.
    # w = [1.2, 0.2], P_0 = 1, P_1 = 2, N_0 = 1 * (1 - x/tau)^2 = 0.64, N_1 = 0.
    # loss = 1.2 * N_0 / (1 + N_0) / 1.4;  dloss/dN_0 = 1.2 / 1.4 / (1 + N_0)^2
    # dN_0/ds0 = -2/tau * (1 - x/tau) = -4 * 0.8 = -3.2, dN_0/ds1 = +3.2.
    S = torch.tensor([0.4, 0.3], dtype=torch.float64)
    T = torch.tensor([1.0, 0.0], dtype=torch.float64)
    loss, grad = _value_and_grad(impl, S, T, chunk_size=1, eps_p=0.0, eps_w=0.0)
    assert loss.item() == pytest.approx(1.2 * 0.64 / 1.64 / 1.4, rel=1e-12)
    g0 = 1.2 / 1.4 / 1.64**2 * -3.2
    torch.testing.assert_close(grad, torch.tensor([g0, -g0], dtype=torch.float64))


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('seed,n', [(0, 7), (1, 13), (2, 20)])
def test_matches_brute_force_with_ties(impl, seed, n):
    S, T, R = _quantised_inputs(n, seed)
    assert len(set(S.tolist())) < n and len(set(T.tolist())) < n  # ties present
    kw = dict(tau=0.5, weight_thres=-0.2, alpha=0.1, ap_mul=1.0)
    loss, grad = _value_and_grad(impl, S, T, R, chunk_size=3, **kw)
    ref, _ = brute_force_loss(S.tolist(), T.tolist(), R.tolist(), tau=0.5, theta=-0.2)
    assert loss.item() == pytest.approx(ref, rel=1e-12, abs=1e-14)
    ref_grad = brute_force_grad(S.tolist(), T.tolist(), R.tolist(), tau=0.5, theta=-0.2)
    torch.testing.assert_close(grad, torch.tensor(ref_grad, dtype=torch.float64), atol=1e-6,
                               rtol=1e-5)


@pytest.mark.parametrize('impl', IMPLS)
def test_matches_brute_force_non_default_constants(impl):
    S, T, R = _quantised_inputs(11, seed=5)
    kw = dict(tau=0.3, weight_thres=0.05, alpha=0.5, ap_mul=2.0, eps_p=1e-3, eps_w=1e-2)
    loss, grad = _value_and_grad(impl, S, T, R, chunk_size=4, **kw)
    bkw = dict(tau=0.3, theta=0.05, alpha=0.5, ap_mul=2.0, eps_p=1e-3, eps_w=1e-2)
    ref, _ = brute_force_loss(S.tolist(), T.tolist(), R.tolist(), **bkw)
    assert loss.item() == pytest.approx(ref, rel=1e-12)
    ref_grad = brute_force_grad(S.tolist(), T.tolist(), R.tolist(), **bkw)
    torch.testing.assert_close(grad, torch.tensor(ref_grad, dtype=torch.float64), atol=1e-6,
                               rtol=1e-5)


@pytest.mark.parametrize('impl', IMPLS)
def test_zero_when_orderings_agree_with_margin(impl):
    # distinct targets 1/16 apart -> S = 8 T gives score gaps >= 0.5 = tau for every pair
    # (binary fractions, so the gaps are exact and the loss is exactly 0)
    T = torch.randperm(12, generator=torch.Generator().manual_seed(0)).double() / 16 - 0.125
    S = 8 * T
    loss, grad = _value_and_grad(impl, S, T)
    assert loss.item() == 0.0
    assert torch.count_nonzero(grad) == 0
    # reversing the student's order (or shrinking the gaps below tau) makes it positive
    assert _loss(impl, -S, T).item() > 0.5
    assert _loss(impl, 0.5 * S, T).item() > 0


@pytest.mark.parametrize('impl', IMPLS)
def test_target_gets_no_gradient(impl):
    S, T, R = _quantised_inputs(9, seed=3)
    S.requires_grad_(True)
    T.requires_grad_(True)
    _loss(impl, S, T, R).backward()
    assert T.grad is None and S.grad is not None


# --------------------------------------------------------------------------------------------
# Gradients and dense == chunked
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize('impl', IMPLS)
def test_gradcheck(impl):
    g = torch.Generator().manual_seed(0)
    n = 10
    S = (torch.randn(n, generator=g, dtype=torch.float64) * 0.3).requires_grad_(True)
    T = torch.randint(-3, 4, (n, ), generator=g).double() * 0.2  # ties in T are fine
    R = torch.rand(n, generator=g) < 0.5
    # continuous S: no pair within the finite-difference step, so the counts P stay fixed
    assert torch.pdist(S.detach()[:, None]).min() > 1e-4
    assert torch.autograd.gradcheck(lambda s: _loss(impl, s, T, R, chunk_size=3), (S, ))


@pytest.mark.parametrize('n,chunk_size', [(50, 1), (50, 7), (50, 16), (50, 50), (50, 64),
                                          (257, 32), (257, 100)])
def test_dense_equals_chunked_float64(n, chunk_size):
    g = torch.Generator().manual_seed(n + chunk_size)
    S = torch.randn(n, generator=g, dtype=torch.float64) * 0.4
    T = torch.randn(n, generator=g, dtype=torch.float64) * 0.4
    T[::5] = T[1::5][:T[::5].numel()]  # ties in T
    S[2::7] = S[3::7][:S[2::7].numel()]  # ties in S
    R = torch.rand(n, generator=g) < 0.3
    ld, gd = _value_and_grad('dense', S, T, R)
    lc, gc = _value_and_grad('chunked', S, T, R, chunk_size=chunk_size)
    assert abs(ld.item() - lc.item()) < 1e-6
    assert (gd - gc).abs().max().item() < 1e-6
    # and much tighter in practice (same arithmetic row by row)
    torch.testing.assert_close(gc, gd, rtol=1e-10, atol=1e-14)


def test_dense_equals_chunked_float32():
    g = torch.Generator().manual_seed(0)
    S = torch.randn(300, generator=g) * 0.4
    T = torch.randn(300, generator=g) * 0.4
    R = torch.rand(300, generator=g) < 0.3
    ld, gd = _value_and_grad('dense', S, T, R)
    lc, gc = _value_and_grad('chunked', S, T, R, chunk_size=64)
    assert lc.dtype == torch.float32 and gc.dtype == torch.float32
    torch.testing.assert_close(lc, ld, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gc, gd, rtol=1e-4, atol=1e-7)
    # float32 stays close to the float64 value
    l64, _ = _value_and_grad('chunked', S.double(), T.double(), R)
    assert abs(lc.item() - l64.item()) < 1e-5


def test_half_input_is_computed_in_float32():
    S, T, R = _quantised_inputs(20, seed=7)
    S16 = S.half().requires_grad_(True)
    loss = continuous_ap_loss_chunked(S16, T.half(), R, chunk_size=6)
    assert loss.dtype == torch.float32
    loss.backward()
    assert S16.grad.dtype == torch.float16
    ref, _ = brute_force_loss(S.half().double().tolist(), T.half().double().tolist(), R.tolist())
    assert loss.item() == pytest.approx(ref, rel=1e-5)


def test_grad_output_scaling_chunked():
    S, T, R = _quantised_inputs(15, seed=8)
    _, g1 = _value_and_grad('chunked', S, T, R)
    S2 = S.clone().requires_grad_(True)
    (3.0 * continuous_ap_loss_chunked(S2, T, R, chunk_size=4)).backward()
    torch.testing.assert_close(S2.grad, 3.0 * g1)


class _MaxStorage(TorchDispatchMode):
    """Records the largest storage (bytes) of any tensor produced by an aten op."""

    def __init__(self):
        super().__init__()
        self.max_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.max_bytes = max(self.max_bytes, t.untyped_storage().nbytes())
        return out


@pytest.mark.parametrize('impl', IMPLS)
def test_chunked_never_materialises_n_by_n(impl):
    n, chunk = 300, 64
    S = torch.randn(n, dtype=torch.float64).requires_grad_(True)
    T = torch.randn(n, dtype=torch.float64)
    rec = _MaxStorage()
    with rec:
        _loss(impl, S, T, chunk_size=chunk).backward()
    if impl == 'chunked':
        assert rec.max_bytes <= chunk * n * 8
    else:
        assert rec.max_bytes >= n * n * 8  # the check does see pairwise matrices


def test_dispatch_and_invalid_impl():
    S, T, R = _quantised_inputs(10, seed=9)
    ref, _ = brute_force_loss(S.tolist(), T.tolist(), R.tolist())
    for impl in IMPLS:
        out = continuous_ap_loss(S, T, R, impl=impl, chunk_size=4)
        assert out.item() == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ValueError, match='impl'):
        continuous_ap_loss(S, T, impl='auto')
    with pytest.raises(ValueError, match='chunk_size'):
        continuous_ap_loss_chunked(S, T, chunk_size=0)


# --------------------------------------------------------------------------------------------
# Module, registry, errors
# --------------------------------------------------------------------------------------------
def test_registered_and_buildable():
    from mmpretrain.registry import MODELS
    assert MODELS.get('ContinuousAPLoss') is ContinuousAPLoss
    loss = MODELS.build(dict(type='ContinuousAPLoss'))
    assert isinstance(loss, ContinuousAPLoss)
    assert (loss.tau, loss.weight_thres, loss.alpha, loss.ap_mul) == (0.5, -0.2, 0.1, 1.0)
    assert loss.impl == 'chunked' and loss.chunk_size == 1024 and loss.loss_weight == 1.0


@pytest.mark.parametrize('impl', IMPLS)
def test_module_matches_brute_force_and_loss_weight(impl):
    S, T, R = _quantised_inputs(17, seed=11)
    module = ContinuousAPLoss(impl=impl, chunk_size=5, loss_weight=2.0)
    pred = S.clone().requires_grad_(True)
    target = T.clone().requires_grad_(True)  # detached inside
    out = module(pred, target, R)
    out.backward()
    ref, _ = brute_force_loss(S.tolist(), T.tolist(), R.tolist())
    assert out.item() == pytest.approx(2.0 * ref, rel=1e-12)
    assert target.grad is None
    ref_grad = brute_force_grad(S.tolist(), T.tolist(), R.tolist())
    torch.testing.assert_close(pred.grad, 2.0 * torch.tensor(ref_grad, dtype=torch.float64),
                               atol=2e-6, rtol=1e-5)


def test_module_without_is_random():
    S, T, _ = _quantised_inputs(8, seed=12)
    ref, _ = brute_force_loss(S.tolist(), T.tolist())
    assert ContinuousAPLoss()(S, T).item() == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize('pred_shape,target_shape,match', [
    ((5, ), (6, ), 'same shape'),
    ((2, 3), (2, 3), 'pred must be 1-D'),
    ((5, ), (5, 1), 'target must be 1-D'),
    ((), (), 'pred must be 1-D'),
    ((0, ), (0, ), 'at least one item'),
])
def test_invalid_shapes_raise(pred_shape, target_shape, match):
    module = ContinuousAPLoss()
    with pytest.raises(ValueError, match=match):
        module(torch.zeros(pred_shape), torch.zeros(target_shape))


@pytest.mark.parametrize('bad', [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize('which', ['pred', 'target'])
def test_non_finite_inputs_raise(bad, which):
    S, T = torch.zeros(4), torch.zeros(4)
    (S if which == 'pred' else T)[2] = bad
    for fn in (ContinuousAPLoss(check_finite=True), continuous_ap_loss_dense,
               continuous_ap_loss_chunked):
        with pytest.raises(ValueError, match=f'{which} must contain only finite values'):
            fn(S, T)
    # the module's default skips the check (a device sync per call): the value is not finite
    assert not torch.isfinite(ContinuousAPLoss()(S, T))


def test_bad_is_random_and_dtypes_raise():
    module = ContinuousAPLoss()
    S, T = torch.zeros(4), torch.zeros(4)
    with pytest.raises(TypeError, match='is_random must be a bool tensor'):
        module(S, T, torch.zeros(4))
    with pytest.raises(ValueError, match='is_random must have shape'):
        module(S, T, torch.zeros(3, dtype=torch.bool))
    with pytest.raises(TypeError, match='pred must be a floating point'):
        module(torch.zeros(4, dtype=torch.long), T)
    with pytest.raises(TypeError, match='target must be a torch.Tensor'):
        module(S, [0.0, 0.0, 0.0, 0.0])


def test_invalid_constructor_args_raise():
    with pytest.raises(ValueError, match='impl'):
        ContinuousAPLoss(impl='fast')
    with pytest.raises(ValueError, match='tau'):
        ContinuousAPLoss(tau=0.0)
    with pytest.raises(ValueError, match='chunk_size'):
        ContinuousAPLoss(chunk_size=0)

"""Continuous-target AP (CoTAP) ranking loss: pure functions.

Paper: Wen et al., "Semantic Concentration for Self-Supervised Dense Representations Learning",
https://arxiv.org/abs/2509.09429 (CoTAP). The formula follows the official code's
``HuberAuxiliaryLoss``.

For a list of ``n`` items with student scores ``S`` (differentiable) and teacher targets ``T``
(constant; detached here), every item ``i`` is an anchor:

* anchor weight ``w_i = max(T_i - weight_thres, 0)``, times ``alpha`` where ``is_random[i]``;
* "items ranked at/above ``i`` that are at least as relevant" (hard count, no gradient)
  ``P_i = sum_j [T_j >= T_i] [S_j >= S_i]`` (``j = i`` included, so ``P_i >= 1``);
* "less relevant items ranked above ``i``", smooth and weighted by the target gap
  ``N_i = ap_mul * sum_j max(T_i - T_j, 0) * h(S_i - S_j)`` with the Huber-like step surrogate
  ``h(x) = 1 - 2x/tau (x < 0); (1 - x/tau)^2 (0 <= x < tau); 0 (x >= tau)``;
* ``l_i = N_i / (N_i + P_i)``, computed as the official code does: ``r = N / (P + eps_p)``,
  ``l = r / (1 + r)``;
* ``loss = sum_i w_i l_i / (sum_i w_i + eps_w)``.

Two implementations with identical values and gradients:

* :func:`continuous_ap_loss_dense`: the O(n^2)-memory pairwise matrices with plain autograd
  (the reference; mirrors the official code).
* :func:`continuous_ap_loss_chunked`: anchors are processed in row chunks of ``chunk_size`` inside
  a :class:`torch.autograd.Function` whose backward recomputes each chunk, so no ``n x n`` tensor
  ever exists: peak extra memory is O(n * chunk_size). Time is still O(n^2).

Gradient used by the chunked backward. With ``g_i = dL/dN_i = w_i / (W (1 + r_i)^2 (P_i + eps_p))``
(``W = sum w + eps_w``) and ``D_ij = max(T_i - T_j, 0)``::

    dL/dS_k = ap_mul * ( g_k sum_j D_kj h'(S_k - S_j)  -  sum_i g_i D_ik h'(S_i - S_k) )

i.e. a row sum (``k`` as anchor ``i``) minus a column sum (``k`` as the other item ``j``) of
``M_ij = g_i D_ij h'(S_i - S_j)``, accumulated chunk by chunk, with
``h'(x) = -(2/tau) clamp(1 - x/tau, 0, 1)``.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    'huber_step', 'huber_step_grad', 'anchor_weights', 'check_cotap_inputs',
    'continuous_ap_loss_dense', 'continuous_ap_loss_chunked', 'continuous_ap_loss',
    'CONTINUOUS_AP_IMPLS'
]

#: implementations accepted by :func:`continuous_ap_loss`. (No ``'auto'``: in the CPU benchmark
#: chunked was faster than dense at every n, 1k included, so there is nothing to switch on.)
CONTINUOUS_AP_IMPLS = ('dense', 'chunked')


def huber_step(x: Tensor, tau: float = 0.5) -> Tensor:
    """Huber-like smooth surrogate of the step ``[x <= 0]`` used by CoTAP.

    ``h(x) = 1 - 2x/tau`` for ``x < 0``, ``(1 - x/tau)^2`` for ``0 <= x < tau``, ``0`` for
    ``x >= tau``. It is continuous with a continuous first derivative (C1), equals 1 at 0,
    vanishes beyond the margin ``tau`` and grows linearly for violated pairs.

    Args:
        x (Tensor): any shape, the score difference ``S_i - S_j``.
        tau (float): margin, > 0. Defaults to 0.5.

    Returns:
        Tensor: same shape and dtype as ``x``.
    """
    u = 1.0 - x / tau
    return torch.where(u > 1.0, 2.0 * u - 1.0, u.clamp(min=0.0).square())


def huber_step_grad(x: Tensor, tau: float = 0.5) -> Tensor:
    """Derivative of :func:`huber_step`: ``-(2/tau) * clamp(1 - x/tau, 0, 1)``.

    Args:
        x (Tensor): any shape.
        tau (float): margin, > 0. Defaults to 0.5.

    Returns:
        Tensor: same shape as ``x``.
    """
    return (1.0 - x / tau).clamp_(0.0, 1.0).mul_(-2.0 / tau)


def anchor_weights(target: Tensor,
                   is_random: Optional[Tensor] = None,
                   weight_thres: float = -0.2,
                   alpha: float = 0.1) -> Tensor:
    """CoTAP anchor weights ``w_i = max(T_i - weight_thres, 0)``, times ``alpha`` where random.

    Args:
        target (Tensor): teacher targets, shape ``[n]``.
        is_random (Tensor, optional): bool ``[n]``; True for items against a random
            (non-neighbour) image. Defaults to None (no item is random).
        weight_thres (float): threshold theta. Defaults to -0.2.
        alpha (float): multiplier for random items. Defaults to 0.1.

    Returns:
        Tensor: ``[n]`` non-negative weights, dtype of ``target``.
    """
    w = (target - weight_thres).clamp(min=0.0)
    if is_random is not None:
        w = torch.where(is_random, w * alpha, w)
    return w


def check_cotap_inputs(pred: Tensor,
                       target: Tensor,
                       is_random: Optional[Tensor] = None,
                       check_finite: bool = True) -> None:
    """Validate CoTAP inputs; raise ``TypeError``/``ValueError`` with a clear message.

    Args:
        pred (Tensor): student scores, floating point, shape ``[n]``, n >= 1.
        target (Tensor): teacher targets, floating point, shape ``[n]``.
        is_random (Tensor, optional): bool, shape ``[n]``.
        check_finite (bool): also reject NaN/inf (one device sync). Defaults to True.
    """
    for name, t in (('pred', pred), ('target', target)):
        if not isinstance(t, Tensor):
            raise TypeError(f'{name} must be a torch.Tensor, got {type(t).__name__}')
        if not t.is_floating_point():
            raise TypeError(f'{name} must be a floating point tensor, got dtype {t.dtype}')
        if t.dim() != 1:
            raise ValueError(f'{name} must be 1-D with shape [n] (one score per list item), '
                             f'got shape {tuple(t.shape)}')
    if pred.shape != target.shape:
        raise ValueError(f'pred and target must have the same shape [n], got pred '
                         f'{tuple(pred.shape)} and target {tuple(target.shape)}')
    if pred.numel() == 0:
        raise ValueError('pred and target must hold at least one item (n >= 1), got n = 0')
    if is_random is not None:
        if not isinstance(is_random, Tensor) or is_random.dtype != torch.bool:
            got = type(is_random).__name__
            if isinstance(is_random, Tensor):
                got += f' of dtype {is_random.dtype}'
            raise TypeError(f'is_random must be a bool tensor of shape [n] or None, got {got}')
        if is_random.shape != pred.shape:
            raise ValueError(f'is_random must have shape {tuple(pred.shape)} like pred, got '
                             f'{tuple(is_random.shape)}')
    if check_finite:
        for name, t in (('pred', pred), ('target', target)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f'{name} must contain only finite values, found NaN or inf')


def _prepare(pred: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
    """Compute in at least float32 (half-precision sums over 20k items are too coarse)."""
    dtype = torch.promote_types(pred.dtype, torch.float32)
    return pred.to(dtype), target.detach().to(dtype)


def continuous_ap_loss_dense(pred: Tensor,
                             target: Tensor,
                             is_random: Optional[Tensor] = None,
                             tau: float = 0.5,
                             weight_thres: float = -0.2,
                             alpha: float = 0.1,
                             ap_mul: float = 1.0,
                             eps_p: float = 1e-5,
                             eps_w: float = 1e-5,
                             check_inputs: bool = True) -> Tensor:
    """CoTAP loss with full ``n x n`` pairwise matrices and plain autograd (reference).

    Memory is O(n^2) (several ``n x n`` tensors are kept for backward).

    Args:
        pred (Tensor): student scores ``S``, shape ``[n]``; gradients flow to it.
        target (Tensor): teacher targets ``T``, shape ``[n]``; detached.
        is_random (Tensor, optional): bool ``[n]``, items against random images
            (weight times ``alpha``). Defaults to None.
        tau (float): margin of :func:`huber_step`. Defaults to 0.5.
        weight_thres (float): anchor-weight threshold theta. Defaults to -0.2.
        alpha (float): weight multiplier of random items. Defaults to 0.1.
        ap_mul (float): multiplier of ``N_i``. Defaults to 1.0.
        eps_p (float): ``r = N / (P + eps_p)``. Defaults to 1e-5.
        eps_w (float): ``loss = sum w l / (sum w + eps_w)``. Defaults to 1e-5.
        check_inputs (bool): validate shapes/dtypes/finiteness. Defaults to True.

    Returns:
        Tensor: scalar loss, dtype ``promote_types(pred.dtype, float32)``.
    """
    if check_inputs:
        check_cotap_inputs(pred, target, is_random)
    S, T = _prepare(pred, target)
    w = anchor_weights(T, is_random, weight_thres, alpha)
    with torch.no_grad():
        # P_i = sum_j [T_j >= T_i][S_j >= S_i]; rows are anchors i, columns j.
        P = ((T[None, :] >= T[:, None]) & (S[None, :] >= S[:, None])).sum(1).to(S.dtype)
    D = (T[:, None] - T[None, :]).clamp(min=0.0)
    N = ap_mul * (D * huber_step(S[:, None] - S[None, :], tau)).sum(1)
    r = N / (P + eps_p)
    ell = r / (1.0 + r)
    return (w * ell).sum() / (w.sum() + eps_w)


def _chunk_stats(S: Tensor, T: Tensor, rows: slice, tau: float, a: Tensor,
                 b: Tensor) -> Tuple[Tensor, Tensor]:
    """``P`` and ``sum_j D_ij h(S_i - S_j)`` (without ``ap_mul``) for anchors ``rows``.

    ``a``, ``b`` are preallocated ``[len(rows), n]`` float work buffers reused across chunks;
    nothing else of that size is allocated (the comparisons are written as 0/1 floats: a sum
    over a bool tensor would first materialise it as int64).
    """
    S_I, T_I = S[rows, None], T[rows, None]
    torch.ge(T[None, :], T_I, out=a)
    torch.ge(S[None, :], S_I, out=b)
    P = a.mul_(b).sum(1)  # exact counts (n < 2^24)
    # With u = 1 - x/tau: h = clamp(u, 0, 1)^2 + 2 max(u - 1, 0) (= 2u - 1 for u > 1,
    # u^2 on [0, 1], 0 below).
    torch.sub(S_I, S[None, :], out=a).mul_(-1.0 / tau).add_(1.0)  # a = u
    torch.sub(a, 1.0, out=b).clamp_(min=0.0).mul_(2.0)  # b = 2 max(u - 1, 0)
    a.clamp_(0.0, 1.0).square_().add_(b)  # a = h
    torch.sub(T_I, T[None, :], out=b).clamp_(min=0.0)  # b = D
    return P, a.mul_(b).sum(1)


class _ContinuousAPChunked(torch.autograd.Function):
    """Memory-bounded CoTAP: forward and backward recompute pairwise terms per anchor chunk."""

    @staticmethod
    def forward(ctx, S: Tensor, T: Tensor, w: Tensor, tau: float, ap_mul: float, eps_p: float,
                eps_w: float, chunk_size: int) -> Tensor:
        n = S.shape[0]
        c = min(chunk_size, n)
        a, b = S.new_empty(c, n), S.new_empty(c, n)
        P = S.new_empty(n)
        N = S.new_empty(n)
        for start in range(0, n, c):
            rows = slice(start, min(start + c, n))
            k = rows.stop - rows.start
            P[rows], N[rows] = _chunk_stats(S, T, rows, tau, a[:k], b[:k])
        del a, b
        N.mul_(ap_mul)
        r = N / (P + eps_p)
        W = w.sum() + eps_w
        loss = (w * (r / (1.0 + r))).sum() / W
        ctx.save_for_backward(S, T, w, P, r, W)
        ctx.cfg = (tau, ap_mul, eps_p, chunk_size)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        S, T, w, P, r, W = ctx.saved_tensors
        tau, ap_mul, eps_p, chunk_size = ctx.cfg
        n = S.shape[0]
        c = min(chunk_size, n)
        # dL/dN_i times ap_mul (dN/dsum) and the incoming gradient, times -2/tau from h'.
        g = (grad_out * ap_mul * (-2.0 / tau)) * w / (W * (1.0 + r).square() * (P + eps_p))
        grad = torch.zeros_like(S)
        a, b = S.new_empty(c, n), S.new_empty(c, n)
        for start in range(0, n, c):
            rows = slice(start, min(start + c, n))
            k = rows.stop - rows.start
            M, D = a[:k], b[:k]
            # M_ij = g_i D_ij h'(S_i - S_j), h'(x) = -(2/tau) clamp(1 - x/tau, 0, 1)
            torch.sub(S[rows, None], S[None, :], out=M).mul_(-1.0 / tau).add_(1.0).clamp_(0.0, 1.0)
            torch.sub(T[rows, None], T[None, :], out=D).clamp_(min=0.0)
            M.mul_(D).mul_(g[rows, None])
            grad[rows] += M.sum(1)  # k = i (anchor)
            grad -= M.sum(0)  # k = j (compared item)
        return grad, None, None, None, None, None, None, None


def continuous_ap_loss_chunked(pred: Tensor,
                               target: Tensor,
                               is_random: Optional[Tensor] = None,
                               tau: float = 0.5,
                               weight_thres: float = -0.2,
                               alpha: float = 0.1,
                               ap_mul: float = 1.0,
                               eps_p: float = 1e-5,
                               eps_w: float = 1e-5,
                               chunk_size: int = 1024,
                               check_inputs: bool = True) -> Tensor:
    """CoTAP loss, memory-bounded: anchors in row chunks, custom recomputing backward.

    Same value and gradient as :func:`continuous_ap_loss_dense` (to rounding) while never
    building an ``n x n`` tensor: peak extra memory is two ``min(chunk_size, n) x n`` work
    buffers (about 2 * 4 * chunk_size * n bytes in float32, 34 MB for n = 4200 at chunk 1024).
    Double backward is not supported.

    Args:
        pred (Tensor): student scores ``S``, shape ``[n]``; gradients flow to it.
        target (Tensor): teacher targets ``T``, shape ``[n]``; detached.
        is_random (Tensor, optional): bool ``[n]``. Defaults to None.
        tau (float): margin of :func:`huber_step`. Defaults to 0.5.
        weight_thres (float): anchor-weight threshold theta. Defaults to -0.2.
        alpha (float): weight multiplier of random items. Defaults to 0.1.
        ap_mul (float): multiplier of ``N_i``. Defaults to 1.0.
        eps_p (float): ``r = N / (P + eps_p)``. Defaults to 1e-5.
        eps_w (float): ``loss = sum w l / (sum w + eps_w)``. Defaults to 1e-5.
        chunk_size (int): anchors per chunk, >= 1. Defaults to 1024.
        check_inputs (bool): validate shapes/dtypes/finiteness. Defaults to True.

    Returns:
        Tensor: scalar loss, dtype ``promote_types(pred.dtype, float32)``.
    """
    if check_inputs:
        check_cotap_inputs(pred, target, is_random)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f'chunk_size must be a positive int, got {chunk_size!r}')
    S, T = _prepare(pred, target)
    w = anchor_weights(T, is_random, weight_thres, alpha)
    return _ContinuousAPChunked.apply(S, T, w, float(tau), float(ap_mul), float(eps_p),
                                      float(eps_w), chunk_size)


def continuous_ap_loss(pred: Tensor,
                       target: Tensor,
                       is_random: Optional[Tensor] = None,
                       tau: float = 0.5,
                       weight_thres: float = -0.2,
                       alpha: float = 0.1,
                       ap_mul: float = 1.0,
                       eps_p: float = 1e-5,
                       eps_w: float = 1e-5,
                       impl: str = 'chunked',
                       chunk_size: int = 1024,
                       check_inputs: bool = True) -> Tensor:
    """CoTAP loss, dispatching on ``impl`` (``'dense'`` or ``'chunked'``).

    Other arguments as in :func:`continuous_ap_loss_chunked` (``chunk_size`` is ignored by
    dense).

    Returns:
        Tensor: scalar loss.
    """
    if impl not in CONTINUOUS_AP_IMPLS:
        raise ValueError(f'impl must be one of {CONTINUOUS_AP_IMPLS}, got {impl!r}')
    kwargs = dict(tau=tau, weight_thres=weight_thres, alpha=alpha, ap_mul=ap_mul, eps_p=eps_p,
                  eps_w=eps_w, check_inputs=check_inputs)
    if impl == 'dense':
        return continuous_ap_loss_dense(pred, target, is_random, **kwargs)
    return continuous_ap_loss_chunked(pred, target, is_random, chunk_size=chunk_size, **kwargs)

"""CoTAP: AP loss with continuous targets, as an mmpretrain ``MODELS`` module."""
from typing import Optional

import torch.nn as nn
from mmpretrain.registry import MODELS
from torch import Tensor

from .functional.continuous_ap import (CONTINUOUS_AP_IMPLS, check_cotap_inputs,
                                      continuous_ap_loss)


@MODELS.register_module()
class ContinuousAPLoss(nn.Module):
    """Continuous-target Average Precision (CoTAP) ranking loss.

    Paper: Wen et al., "Semantic Concentration for Self-Supervised Dense Representations
    Learning", https://arxiv.org/abs/2509.09429. The formula is the one of the official code
    (``HuberAuxiliaryLoss``); the paper text itself could not be checked.

    What "AP to continuous" means: the AP loss is ``1 - mean over positives i of precision(i)``,
    ``precision(i) = P_i / (P_i + N_i)`` with ``P_i`` / ``N_i`` the positives / negatives ranked
    at or above ``i``. CoTAP removes the binary positive set: every list item is an anchor,
    weighted by its (continuous) teacher similarity ``w_i = max(T_i - weight_thres, 0)``
    (``alpha`` times that for items against random images); an item ``j`` acts as a "negative"
    for anchor ``i`` in proportion to ``max(T_i - T_j, 0)`` — no threshold ever turns teacher
    similarities into labels ("decision-agnostic") — and ranking it above ``i`` is penalised by
    the smooth step ``h_tau(S_i - S_j)`` (zero once ``S_i`` beats ``S_j`` by the margin ``tau``).
    ``P_i = sum_j [T_j >= T_i][S_j >= S_i]`` is a hard count without gradient. The per-anchor
    loss ``N_i / (N_i + P_i)`` (~ 1 - precision at i's rank) gives large gradients to anchors
    with few violators and saturates for hopeless ones ("adaptive focusing")::

        loss = loss_weight * sum_i w_i N_i / (N_i + P_i) / (sum_i w_i + eps_w)

    All items of the list are ranked jointly (one global ranking, as in the official code);
    the caller flattens its similarity entries into one list per pooling scale.

    Two implementations with equal values and gradients: ``'dense'`` (``n x n`` matrices,
    plain autograd, O(n^2) memory, mirrors the official code) and ``'chunked'`` (anchors in
    chunks of ``chunk_size`` rows, custom backward that recomputes each chunk, O(n * chunk_size)
    memory). ``'chunked'`` is the default: in ``tools/benchmarks/bench_cotap_loss.py`` (CPU) it
    was faster than dense at every size (about 1.7x at n = 1k, 15-20x at the official n = 4200)
    and used a fraction of the memory (8 % at n = 4200, chunk 1024). On CPU smaller chunks
    (128) were another 3-4x faster at n >= 16k (cache-sized buffers); ``chunk_size=1024`` is
    kept as the default to keep few kernel launches on GPU (not measured: no GPU here).

    Args:
        tau (float): margin of the Huber-like step surrogate. Defaults to 0.5.
        weight_thres (float): anchor-weight threshold theta in ``max(T - theta, 0)``.
            Defaults to -0.2.
        alpha (float): anchor-weight multiplier for items against random images.
            Defaults to 0.1.
        ap_mul (float): multiplier of ``N_i``. Defaults to 1.0.
        impl (str): ``'chunked'`` or ``'dense'``. Defaults to ``'chunked'``.
        chunk_size (int): anchors per chunk for ``'chunked'``. Defaults to 1024.
        eps_p (float): ``r = N / (P + eps_p)``, ``l = r / (1 + r)``. Defaults to 1e-5.
        eps_w (float): denominator epsilon of the weighted mean. Defaults to 1e-5.
        loss_weight (float): multiplier of the loss. Defaults to 1.0.
        check_finite (bool): raise ``ValueError`` on NaN/inf inputs (costs a device sync per
            call; in training :class:`DivergenceHook` already stops a run whose loss is not
            finite and names the term). Defaults to False.
    """

    def __init__(self,
                 tau: float = 0.5,
                 weight_thres: float = -0.2,
                 alpha: float = 0.1,
                 ap_mul: float = 1.0,
                 impl: str = 'chunked',
                 chunk_size: int = 1024,
                 eps_p: float = 1e-5,
                 eps_w: float = 1e-5,
                 loss_weight: float = 1.0,
                 check_finite: bool = False) -> None:
        super().__init__()
        if impl not in CONTINUOUS_AP_IMPLS:
            raise ValueError(f'impl must be one of {CONTINUOUS_AP_IMPLS}, got {impl!r}')
        if not tau > 0:
            raise ValueError(f'tau must be > 0, got {tau}')
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f'chunk_size must be a positive int, got {chunk_size!r}')
        self.tau = float(tau)
        self.weight_thres = float(weight_thres)
        self.alpha = float(alpha)
        self.ap_mul = float(ap_mul)
        self.impl = impl
        self.chunk_size = chunk_size
        self.eps_p = float(eps_p)
        self.eps_w = float(eps_w)
        self.loss_weight = float(loss_weight)
        self.check_finite = check_finite

    def forward(self,
                pred: Tensor,
                target: Tensor,
                is_random: Optional[Tensor] = None) -> Tensor:
        """Compute the loss.

        Args:
            pred (Tensor): student scores, floating point, shape ``[n]``.
            target (Tensor): teacher targets, shape ``[n]``; detached here.
            is_random (Tensor, optional): bool ``[n]``, True for items against a random
                image (their anchor weight is multiplied by ``alpha``). Defaults to None.

        Returns:
            Tensor: scalar loss (float32, or float64 for float64 inputs).
        """
        check_cotap_inputs(pred, target, is_random, check_finite=self.check_finite)
        loss = continuous_ap_loss(
            pred,
            target.detach(),
            is_random,
            tau=self.tau,
            weight_thres=self.weight_thres,
            alpha=self.alpha,
            ap_mul=self.ap_mul,
            eps_p=self.eps_p,
            eps_w=self.eps_w,
            impl=self.impl,
            chunk_size=self.chunk_size,
            check_inputs=False)
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        return (f'tau={self.tau}, weight_thres={self.weight_thres}, alpha={self.alpha}, '
                f'ap_mul={self.ap_mul}, impl={self.impl!r}, chunk_size={self.chunk_size}, '
                f'loss_weight={self.loss_weight}')

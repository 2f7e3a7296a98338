"""Sinkhorn-Knopp equipartition of prototype scores (SwAV convention), process-group aware.

Used by CoTAP's clustering terms (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_: patch
codes with epsilon 0.05, CLS codes with epsilon 0.07, 3 iterations), which
follow SwAV (`arXiv 2006.09882 <https://arxiv.org/abs/2006.09882>`_, ``distributed_sinkhorn``) and
Leopart (`arXiv 2204.13101 <https://arxiv.org/abs/2204.13101>`_).
"""
from typing import Optional

import torch
from mmengine.dist import all_reduce, get_world_size

__all__ = ['sinkhorn_knopp', 'mean_code_entropy']


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor,
                   epsilon: float = 0.05,
                   iters: int = 3,
                   distributed: Optional[bool] = None) -> torch.Tensor:
    """Soft equipartitioned assignments ("codes") of N samples to K prototypes.

    SwAV's ``distributed_sinkhorn``: ``Q = exp(scores / epsilon)^T`` [K, N_total], normalised to
    sum 1, then ``iters`` times: rows (prototypes) rescaled to sum ``1 / K``, columns (samples) to
    ``1 / N_total``; finally multiplied by ``N_total`` and transposed back.

    **Marginals of the result** [N, K] (SwAV convention): every *row* (one sample's code) sums to
    exactly 1 (the last step is the sample normalisation), and every *column* (one prototype),
    summed over all samples of all processes, is approximately ``N_total / K`` (exact after the
    prototype step, so the closer the more ``iters``).

    When running distributed (``distributed=None`` and ``mmengine.dist.get_world_size() > 1``,
    or ``distributed=True``) the sums over samples (the total mass, the prototype marginals,
    ``N_total``) and the stabilising maximum are all-reduced with ``mmengine.dist.all_reduce``,
    i.e. the N rows of every process form one joint problem (each process gets its own rows
    back). Every process must call this function the same number of times (collectives), also
    with ``N = 0`` rows.

    The computation runs in float32 with autocast disabled, whatever the input dtype, and
    subtracts the global maximum of ``scores / epsilon`` before ``exp`` (the normalisation
    cancels it, so the result equals SwAV's without overflow).

    Args:
        scores (Tensor): [N, K] prototype scores (cosines for DINO-style heads); N may be 0.
        epsilon (float): entropic regularisation (temperature) > 0. Defaults to 0.05.
        iters (int): Sinkhorn iterations >= 1. Defaults to 3.
        distributed (bool, optional): force (True) or forbid (False) the all-reduces; None:
            whenever the world size is > 1. Defaults to None.

    Returns:
        Tensor: [N, K] float32 codes, no gradient.
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        raise ValueError('scores must be a tensor [N, K], got '
                         f'{getattr(scores, "shape", type(scores))}')
    if not epsilon > 0:
        raise ValueError(f'epsilon must be > 0, got {epsilon!r}')
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f'iters must be an int >= 1, got {iters!r}')
    N, K = scores.shape
    if K < 1:
        raise ValueError(f'scores must have at least one prototype column, got shape {(N, K)}')
    use_dist = get_world_size() > 1 if distributed is None else bool(distributed)

    def _reduce(x: torch.Tensor, op: str = 'sum') -> torch.Tensor:
        if use_dist:
            all_reduce(x, op=op)
        return x

    with torch.autocast(device_type=scores.device.type, enabled=False):
        logits = scores.detach().float() / float(epsilon)
        if N > 0:
            peak = logits.max().reshape(1)
        else:
            peak = logits.new_full((1, ), -float('inf'))
        peak = _reduce(peak, 'max')
        n_total = _reduce(logits.new_tensor([float(N)]))
        # non-finite scores give zero codes; decided on the device (no sync): an empty batch
        # (n_total 0) has no rows to fill anyway
        finite = torch.isfinite(peak)
        peak = torch.where(finite, peak, torch.zeros_like(peak))
        q = torch.exp(logits - peak).t()  # [K, N]
        tiny = torch.finfo(q.dtype).tiny
        q /= _reduce(q.sum().reshape(1)).clamp_min(tiny)
        for _ in range(iters):
            row = _reduce(q.sum(dim=1, keepdim=True))  # prototype marginals over all processes
            q /= row.clamp_min(tiny)
            q /= K
            q /= q.sum(dim=0, keepdim=True).clamp_min(tiny)  # sample marginals (local)
            q /= n_total
        q *= n_total
        return torch.where(finite, q.t(), torch.zeros_like(q.t())).contiguous()


@torch.no_grad()
def mean_code_entropy(codes: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean entropy (nats) of the code distributions along ``dim``: how decided the cluster
    assignments that a clustering term trains towards are.

    Sinkhorn codes always use every prototype equally over the batch, so their per-item entropy
    is what shows whether they carry a signal: ``ln K`` means every item is spread evenly over all
    prototypes (the term then teaches nothing), 0 means hard assignments. Items whose codes are
    all zero (CoTAP's background cells) are skipped; each other item is renormalised to sum 1.

    Args:
        codes (Tensor): [..., K, ...] non-negative codes, K along ``dim``.
        dim (int): prototype dimension. Defaults to -1.

    Returns:
        Tensor: float32 scalar; 0 when no item has codes.
    """
    q = codes.detach().float().movedim(dim, -1)
    q = q.reshape(-1, q.shape[-1])
    mass = q.sum(dim=-1, keepdim=True)
    keep = (mass[:, 0] > 1e-6).float()  # weights, not indexing: no host sync on the hot path
    q = q / mass.clamp_min(1e-6)
    entropy = -(q * q.clamp_min(1e-12).log()).sum(dim=-1)
    return (entropy * keep).sum() / keep.sum().clamp_min(1.0)

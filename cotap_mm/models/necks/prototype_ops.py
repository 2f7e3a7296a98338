"""Pure functions of CoTAP's object-aware filter: conv cross-attention scores, k-means, bank samples.

CoTAP: https://arxiv.org/abs/2509.09429 (official code: github.com/KID-7391/CoTAP,
``models/vit/vision_transformer_depth.py``).
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ['prototype_conv_scores', 'kmeans_prototypes', 'pool_bank_samples']


def prototype_conv_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Scores of every patch for every spatial prototype: a per-head conv of the query map.

    ``score[b, h, p, m] = sum_{dy, dx} < q[b, h, y+dy-r, x+dx-r], k[m, h, dy, dx] >`` with
    p = y*w + x, r = K // 2 and zero padding (queries outside the grid contribute 0). This is
    ``conv2d(q_map, k_templates, padding=r, groups=heads)`` (cross-correlation: template cell
    (dy, dx) meets the neighbour at offset (dy - r, dx - r)). No scaling, no softmax.

    Args:
        q (Tensor): queries [B, H, h, w, d] (H heads, d = head dim).
        k (Tensor): prototype keys [M, H, K, K, d], K odd (3 in CoTAP).

    Returns:
        Tensor: [B, H, N, M], N = h*w in row-major order.
    """
    if q.dim() != 5:
        raise ValueError(f'q must be [B, heads, h, w, head_dim], got shape {tuple(q.shape)}')
    if k.dim() != 5:
        raise ValueError(f'k must be [M, heads, K, K, head_dim], got shape {tuple(k.shape)}')
    B, H, h, w, d = q.shape
    M, Hk, K1, K2, dk = k.shape
    if Hk != H or dk != d:
        raise ValueError(f'k heads/head_dim ({Hk}, {dk}) must match q ({H}, {d})')
    if K1 != K2 or K1 % 2 == 0:
        raise ValueError(f'k spatial size must be square and odd, got ({K1}, {K2})')
    x = q.permute(0, 1, 4, 2, 3).reshape(B, H * d, h, w)
    # weight[g*M + m, c, ky, kx] = k[m, g, ky, kx, c]
    weight = k.permute(1, 0, 4, 2, 3).reshape(H * M, d, K1, K2).to(x.dtype)
    out = F.conv2d(x, weight, padding=K1 // 2, groups=H)  # [B, H*M, h, w]
    return out.view(B, H, M, h * w).transpose(2, 3)


def kmeans_prototypes(bank: torch.Tensor,
                      num_prototypes: int,
                      iters: int = 3000,
                      seed: int = 0,
                      init: str = 'random',
                      normalize: bool = True,
                      tol_stop: bool = True) -> torch.Tensor:
    """Spherical (L2-normalised) k-means of flattened bank samples, as CoTAP's prototype init.

    Samples are flattened to D = C*K*K and L2-normalised; assignment = max cosine similarity;
    centre update = mean of assigned samples, re-normalised. A centre that receives no sample
    ("dead") is re-seeded with the sample that is currently worst fitted (lowest cosine to its
    centre; distinct samples for several dead centres). The official code re-seeds dead centres;
    choosing the worst-fitted sample instead of a random one is our choice (deterministic and
    never re-seeds onto an already covered point). Runs on the bank's device.

    Args:
        bank (Tensor): [S, C, K, K] (or [S, D]) samples, S >= num_prototypes.
        num_prototypes (int): M.
        iters (int): maximum iterations (official: up to 3000). Defaults to 3000.
        seed (int): seed of the initial centre choice. Defaults to 0.
        init (str): 'random' (M distinct random samples, as the official code) or 'kmeans++'.
            Defaults to 'random'.
        normalize (bool): spherical k-means on L2-normalised samples, returning unit-norm centres.
            If False, plain Euclidean k-means. Defaults to True.
        tol_stop (bool): stop early once assignments no longer change. Defaults to True.

    Returns:
        Tensor: centres [M, *bank.shape[1:]] (unit L2 norm over all C*K*K entries if ``normalize``).
    """
    if not isinstance(bank, torch.Tensor) or bank.dim() < 2:
        raise ValueError('bank must be a tensor [S, C, K, K] or [S, D], got '
                         f'{getattr(bank, "shape", type(bank))}')
    S = bank.shape[0]
    if not isinstance(num_prototypes, int) or num_prototypes < 1:
        raise ValueError(f'num_prototypes must be a positive int, got {num_prototypes!r}')
    if S < num_prototypes:
        raise ValueError(f'bank has S={S} samples, fewer than num_prototypes={num_prototypes}')
    if init not in ('random', 'kmeans++'):
        raise ValueError(f"init must be 'random' or 'kmeans++', got {init!r}")
    if iters < 1:
        raise ValueError(f'iters must be >= 1, got {iters}')
    x = bank.detach().reshape(S, -1).float()
    if normalize:
        x = F.normalize(x, dim=1)
    M = num_prototypes
    gen = torch.Generator(device='cpu').manual_seed(seed)

    def sim(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # similarity to maximise: cosine, or negative squared distance
        if normalize:
            return a @ c.t()
        return -torch.cdist(a, c).pow(2)

    if init == 'random':
        c = x[torch.randperm(S, generator=gen)[:M].to(x.device)].clone()
    else:
        first = int(torch.randint(S, (1, ), generator=gen))
        chosen = [first]
        d2 = torch.cdist(x, x[first:first + 1]).pow(2).squeeze(1)
        for _ in range(1, M):
            p = d2.clamp_min(0).cpu().double()
            if float(p.sum()) <= 0:
                remaining = [i for i in range(S) if i not in set(chosen)]
                nxt = remaining[int(torch.randint(len(remaining), (1, ), generator=gen))]
            else:
                nxt = int(torch.multinomial(p / p.sum(), 1, generator=gen))
            chosen.append(nxt)
            d2 = torch.minimum(d2, torch.cdist(x, x[nxt:nxt + 1]).pow(2).squeeze(1))
        c = x[torch.tensor(chosen, device=x.device)].clone()

    assign: Optional[torch.Tensor] = None
    for _ in range(iters):
        s = sim(x, c)
        best, new_assign = s.max(dim=1)
        counts = torch.bincount(new_assign, minlength=M)
        sums = torch.zeros_like(c).index_add_(0, new_assign, x)
        alive = counts > 0
        new_c = c.clone()
        new_c[alive] = sums[alive] / counts[alive].unsqueeze(1).to(x.dtype)
        if normalize:
            new_c = F.normalize(new_c, dim=1)
        dead = (~alive).nonzero().flatten()
        if dead.numel() > 0:
            # re-seed with the worst-fitted samples (lowest similarity to their own centre)
            order = torch.argsort(best)
            new_c[dead] = x[order[:dead.numel()]]
        converged = (assign is not None and dead.numel() == 0 and torch.equal(new_assign, assign))
        c = new_c
        assign = new_assign
        if tol_stop and converged:
            break
    return c.to(bank.dtype).reshape(M, *bank.shape[1:])


def pool_bank_samples(patch_tokens: torch.Tensor,
                      hw: Sequence[int],
                      kernel_size: int = 3) -> torch.Tensor:
    """Bank samples for prototype init / entropy loss: K x K adaptive-avg-pooled token maps.

    Official CoTAP pools the tokens *entering* the last block (patch tokens only) of each image to a
    3x3 map.

    Args:
        patch_tokens (Tensor): [B, N, C] with N = h*w (no CLS token).
        hw (Sequence[int]): (h, w).
        kernel_size (int): K. Defaults to 3.

    Returns:
        Tensor: [B, C, K, K].
    """
    if patch_tokens.dim() != 3:
        raise ValueError(f'patch_tokens must be [B, N, C], got shape {tuple(patch_tokens.shape)}')
    B, N, C = patch_tokens.shape
    h, w = int(hw[0]), int(hw[1])
    if h * w != N:
        raise ValueError(f'hw={tuple(hw)} does not match N={N} patch tokens')
    fmap = patch_tokens.transpose(1, 2).reshape(B, C, h, w)
    return F.adaptive_avg_pool2d(fmap, kernel_size)

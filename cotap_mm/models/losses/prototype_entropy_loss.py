"""Prototype entropy loss of CoTAP's object-aware filter (official ``EntropyMaxLoss``,
logged as ``loss_kernel_align``).

CoTAP: "Semantic Concentration for Self-Supervised Dense Representations Learning",
https://arxiv.org/abs/2509.09429 (official code: github.com/KID-7391/CoTAP).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmpretrain.registry import MODELS

__all__ = ['prototype_entropy', 'PrototypeEntropyLoss']


def prototype_entropy(prototypes: torch.Tensor,
                      bank: torch.Tensor,
                      temperature: float = 0.1) -> torch.Tensor:
    """Mean entropy of each prototype's softmax over bank samples of cosine similarity / T.

    ``p_m = softmax_s(cos(prototype_m, bank_s) / T)``, ``loss = mean_m(-sum_s p_ms log p_ms)``.
    Prototypes and samples are flattened (C*K*K) before the cosine. The bank is detached: the
    gradient reaches only the prototypes. Minimising pulls each prototype towards a few real bank
    patterns (keeps it on the data manifold).

    Args:
        prototypes (Tensor): [M, C, K, K] or [M, D].
        bank (Tensor): [S, C, K, K] or [S, D], same number of entries per sample as the prototypes.
        temperature (float): T > 0. Defaults to 0.1.

    Returns:
        Tensor: scalar, in [0, log S].
    """
    if not isinstance(prototypes, torch.Tensor) or prototypes.dim() < 2:
        raise ValueError('prototypes must be a tensor [M, C, K, K] or [M, D], got '
                         f'{getattr(prototypes, "shape", type(prototypes))}')
    if not isinstance(bank, torch.Tensor) or bank.dim() < 2:
        raise ValueError(f'bank must be a tensor [S, ...], got {getattr(bank, "shape", type(bank))}')
    if temperature <= 0:
        raise ValueError(f'temperature must be > 0, got {temperature}')
    p = prototypes.reshape(prototypes.shape[0], -1)
    s = bank.detach().reshape(bank.shape[0], -1).to(p.dtype)
    if p.shape[1] != s.shape[1]:
        raise ValueError(f'prototypes have {p.shape[1]} entries each, bank samples {s.shape[1]}: '
                         f'shapes {tuple(prototypes.shape)} vs {tuple(bank.shape)}')
    logits = F.normalize(p, dim=1) @ F.normalize(s, dim=1).t() / temperature  # [M, S]
    logp = F.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(dim=1).mean()


@MODELS.register_module()
class PrototypeEntropyLoss(nn.Module):
    """Entropy of prototype-to-bank assignments (CoTAP object-aware filter).

    Paper: `Semantic Concentration for Self-Supervised Dense Representations Learning
    <https://arxiv.org/abs/2509.09429>`_. The only loss that trains the filter's prototypes.

    Args:
        temperature (float): cosine temperature T. Defaults to 0.1.
        loss_weight (float): multiplier. Defaults to 1.0.

    Inputs of ``forward``: ``prototypes`` [M, C, K, K] or [M, D] (with grad), ``bank`` [S, same]
    (detached inside). Output: weighted scalar (see :func:`prototype_entropy`).
    """

    def __init__(self, temperature: float = 0.1, loss_weight: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f'temperature must be > 0, got {temperature}')
        self.temperature = float(temperature)
        self.loss_weight = float(loss_weight)

    def forward(self, prototypes: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        return self.loss_weight * prototype_entropy(prototypes, bank, self.temperature)

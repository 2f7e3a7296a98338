"""Common part of CoTAP's clustering terms: a student temperature and an optional loss weight.

CoTAP: "Semantic Concentration for Self-Supervised Dense Representations Learning",
https://arxiv.org/abs/2509.09429. :class:`ClsClusterLoss`,
:class:`ClsNeighborLoss` and :class:`PatchClusterLoss` all score student predictions against
(Sinkhorn) codes with ``-sum_k code_k log_softmax(student / student_temp)_k``.
"""
from typing import Optional

import torch
import torch.nn as nn

__all__ = ['CodePredictionLoss']


class CodePredictionLoss(nn.Module):
    """Base class (not registered) of the code-prediction terms of
    :class:`~cotap_mm.models.algorithms.cotap.CoTAP`.

    Args:
        student_temp (float): student temperature, > 0.
        loss_weight (float, optional): multiplier; 0 or None disables the term in ``CoTAP``
            (:meth:`weighted` then returns 0 times the loss).
    """

    def __init__(self, student_temp: float, loss_weight: Optional[float] = 1.0) -> None:
        super().__init__()
        if not student_temp > 0:
            raise ValueError(f'student_temp must be > 0, got {student_temp!r}')
        self.student_temp = float(student_temp)
        self.loss_weight = None if loss_weight is None else float(loss_weight)

    def weighted(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss_weight * loss`` (``0 * loss`` when ``loss_weight`` is None)."""
        return (0.0 if self.loss_weight is None else self.loss_weight) * loss

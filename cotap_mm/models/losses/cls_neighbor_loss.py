"""Image-level neighbour consistency term of CoTAP (``loss_cls_neighbor``).

CoTAP: "Semantic Concentration for Self-Supervised Dense Representations Learning",
https://arxiv.org/abs/2509.09429 (official ``loss_intra_cls_intra``).
"""
from typing import Optional

import torch
from mmpretrain.registry import MODELS

from .code_prediction_loss import CodePredictionLoss
from .functional.cluster_prediction import neighbor_code_loss

__all__ = ['ClsNeighborLoss']


@MODELS.register_module()
class ClsNeighborLoss(CodePredictionLoss):
    """The teacher's Sinkhorn CLS codes of the partner image are the anchor's targets.

    Paper: `Semantic Concentration for Self-Supervised Dense Representations Learning
    <https://arxiv.org/abs/2509.09429>`_: the teacher Sinkhorn codes of the neighbour's global crops
    are the targets of the anchor's student predictions and vice versa (all crop pairs), CE with
    student temperature 0.2. Loss :func:`neighbor_code_loss`: mean over the given
    student crops of ``u`` (CoTAP passes its global crops), all global crops of ``partner[u]`` and all ``u`` of
    ``-sum_k code_k log_softmax(student / student_temp)_k``; symmetric partners give the
    "vice versa". The codes are those of the CLS clustering term (same Sinkhorn, same queue).

    Args:
        student_temp (float): student temperature. Defaults to 0.2.
        loss_weight (float, optional): multiplier; 0 or None disables the term in ``CoTAP``.
            Defaults to 1.0.

    ``forward(student_logits [V, B, K], codes [G, B, K], partner [B]) -> weighted scalar``.
    """

    def __init__(self, student_temp: float = 0.2, loss_weight: Optional[float] = 1.0) -> None:
        super().__init__(student_temp, loss_weight)

    def forward(self, student_logits: torch.Tensor, codes: torch.Tensor,
                partner: torch.Tensor) -> torch.Tensor:
        loss = neighbor_code_loss(student_logits, codes, partner, self.student_temp)
        return self.weighted(loss)

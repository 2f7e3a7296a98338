"""SwAV/DINO-style CLS clustering term of CoTAP (``loss_cls_cluster``).

CoTAP: "Semantic Concentration for Self-Supervised Dense Representations Learning",
https://arxiv.org/abs/2509.09429 (official ``loss_inner_cls_inner``), after SwAV,
https://arxiv.org/abs/2006.09882.
"""
from typing import Optional, Sequence

import torch
from mmpretrain.registry import MODELS

from .code_prediction_loss import CodePredictionLoss
from .functional.cluster_prediction import cross_view_code_loss

__all__ = ['ClsClusterLoss']


@MODELS.register_module()
class ClsClusterLoss(CodePredictionLoss):
    """Every student crop predicts the teacher's Sinkhorn CLS codes of every *other* crop.

    Paper: `Semantic Concentration for Self-Supervised Dense Representations Learning
    <https://arxiv.org/abs/2509.09429>`_. The codes come from the owner
    (:class:`~cotap_mm.models.algorithms.cotap.CoTAP`: Sinkhorn, epsilon 0.07, over the teacher CLS
    vectors of the global crops plus a queue); the loss is :func:`cross_view_code_loss`:
    mean over (teacher crop, other student crop) pairs of
    ``-sum_k code_k log_softmax(student / student_temp)_k``.

    Args:
        student_temp (float): student temperature. Defaults to 0.1.
        loss_weight (float, optional): multiplier; 0 or None disables the term in ``CoTAP``.
            Defaults to 1.0.

    ``forward(student_logits [V, B, K], codes [G, B, K], student_view_ids=None,
    code_view_ids=None) -> weighted scalar``.
    """

    def __init__(self, student_temp: float = 0.1, loss_weight: Optional[float] = 1.0) -> None:
        super().__init__(student_temp, loss_weight)

    def forward(self,
                student_logits: torch.Tensor,
                codes: torch.Tensor,
                student_view_ids: Optional[Sequence[int]] = None,
                code_view_ids: Optional[Sequence[int]] = None) -> torch.Tensor:
        loss = cross_view_code_loss(student_logits, codes, self.student_temp, student_view_ids,
                                    code_view_ids)
        return self.weighted(loss)

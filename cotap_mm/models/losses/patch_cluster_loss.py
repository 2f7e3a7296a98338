"""Leopart-style patch clustering term of CoTAP (``loss_patch_cluster``).

CoTAP: "Semantic Concentration for Self-Supervised Dense Representations Learning",
https://arxiv.org/abs/2509.09429, after Leopart, https://arxiv.org/abs/2204.13101.
"""
from typing import Optional, Sequence

import torch
from mmpretrain.registry import MODELS

from ..utils.region_pooling import pool_crop_overlaps
from .code_prediction_loss import CodePredictionLoss
from .functional.cluster_prediction import pairwise_mean_cross_entropy, soft_cross_entropy

__all__ = ['PatchClusterLoss']


@MODELS.register_module()
class PatchClusterLoss(CodePredictionLoss):
    """Student crops predict the teacher's patch cluster codes of the *other* crops, over their
    overlap (Leopart-style term of CoTAP).

    Paper: `Semantic Concentration for Self-Supervised Dense Representations Learning
    <https://arxiv.org/abs/2509.09429>`_; Leopart: https://arxiv.org/abs/2204.13101. The owner
    (:class:`~cotap_mm.models.algorithms.cotap.CoTAP`) computes the teacher codes. For every
    (teacher global crop ``t``, student crop ``c != t``) pair (:func:`pool_crop_overlaps`):

    1. the teacher code map and foreground mask of ``t`` and the student score map of ``c`` are
       RoI-aligned (``roi_size`` x ``roi_size``) over ``box_t ∩ box_c``;
    2. target of a cell = pooled codes renormalised to sum 1; a cell counts where its pooled
       foreground fraction is ``>= fg_threshold - 1e-6`` (1.0: fully foreground) and the crops
       overlap;
    3. ``-sum_k target_k log_softmax(student / student_temp)_k`` averaged over the counted cells:
       per pair, then over the G * (V - 1) pairs (``reduction='pair'``; an empty pair gives 0), or
       over all counted cells at once (``reduction='cell'``).

    Args:
        student_temp (float): student temperature. Defaults to 0.1.
        roi_size (int): pooled grid size. Defaults to 6.
        fg_threshold (float): minimal pooled foreground fraction of a counted cell, in [0, 1].
            Defaults to 1.0.
        reduction (str): 'pair' or 'cell'. Defaults to 'pair'.
        loss_weight (float, optional): multiplier; 0 or None disables the term in ``CoTAP``.
            Defaults to 1.0.

    ``forward(student_maps, teacher_codes, teacher_fg, crop_boxes, crop_sizes, crop_flips=None)``:

    - ``student_maps``: V tensors [B, K, h_c, w_c], student patch scores of every crop;
    - ``teacher_codes``: [G, B, K, h, w] codes of the teacher global crops (crop indices 0..G-1);
    - ``teacher_fg``: [G, B, h, w] foreground mask (bool or float);
    - ``crop_boxes`` [B, V, 4] original-image boxes, ``crop_sizes`` V ``(H, W)`` pixel sizes,
      ``crop_flips`` [B, V] bool or None.

    Returns a weighted scalar (0, still in the graph, when no cell counts).
    """

    def __init__(self,
                 student_temp: float = 0.1,
                 roi_size: int = 6,
                 fg_threshold: float = 1.0,
                 reduction: str = 'pair',
                 loss_weight: Optional[float] = 1.0) -> None:
        super().__init__(student_temp, loss_weight)
        if isinstance(roi_size, bool) or not isinstance(roi_size, int) or roi_size < 1:
            raise ValueError(f'roi_size must be a positive int, got {roi_size!r}')
        if not 0.0 <= float(fg_threshold) <= 1.0:
            raise ValueError(f'fg_threshold must be in [0, 1], got {fg_threshold!r}')
        if reduction not in ('pair', 'cell'):
            raise ValueError(f"reduction must be 'pair' or 'cell', got {reduction!r}")
        self.roi_size = roi_size
        self.fg_threshold = float(fg_threshold)
        self.reduction = reduction

    def forward(self,
                student_maps: Sequence[torch.Tensor],
                teacher_codes: torch.Tensor,
                teacher_fg: torch.Tensor,
                crop_boxes: torch.Tensor,
                crop_sizes: Sequence[Sequence[int]],
                crop_flips: Optional[torch.Tensor] = None) -> torch.Tensor:
        if teacher_codes.dim() != 5:
            raise ValueError(f'teacher_codes must be [G, B, K, h, w], got '
                             f'{tuple(teacher_codes.shape)}')
        G, B, K, h, w = teacher_codes.shape
        if teacher_fg.shape != (G, B, h, w):
            raise ValueError(f'teacher_fg must be [G, B, h, w] = {(G, B, h, w)}, got '
                             f'{tuple(teacher_fg.shape)}')
        for c, m in enumerate(student_maps):
            if m.dim() != 4 or m.shape[1] != K:
                raise ValueError(f'student_maps[{c}] must be [B, K={K}, h, w], got '
                                 f'{tuple(m.shape)}')
        target_in = torch.cat([teacher_codes.detach().float(),
                               teacher_fg.detach().float().unsqueeze(2)], dim=2)
        pooled_t, pooled_s, valid, _ = pool_crop_overlaps(target_in, student_maps, crop_boxes,
                                                          crop_sizes, crop_flips, self.roi_size)
        codes, fg = pooled_t[:, :, :K], pooled_t[:, :, K]  # [P, B, K, S, S], [P, B, S, S]
        mass = codes.sum(dim=2, keepdim=True)
        target = codes / mass.clamp_min(1e-12)
        # 1e-6: the RoI interpolation of an all-foreground region can round to 0.99999988
        mask = ((fg >= self.fg_threshold - 1e-6) & (mass[:, :, 0] > 1e-6)
                & valid[:, :, None, None])
        if self.reduction == 'cell':
            loss = soft_cross_entropy(pooled_s, target, self.student_temp, mask, dim=2)
        else:
            loss = pairwise_mean_cross_entropy(pooled_s, target, self.student_temp, mask)
        return self.weighted(loss)

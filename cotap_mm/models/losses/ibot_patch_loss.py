"""iBOT's patch-level self-distillation loss (masked image modelling with an online tokenizer).

iBOT: `Image BERT Pre-Training with Online Tokenizer <https://arxiv.org/abs/2111.07832>`_ (official
code: github.com/bytedance/ibot, ``iBOTLoss``). Used by the de-coupling iBOT baseline
(:class:`~cotap_mm.models.algorithms.ddssl_ibot.DDSSLiBOT`, arXiv 2303.16947 and its ICLR-2024
successor) both for the masked patches and, with another weight mask, for the kept tokens of the
de-coupling branch.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS

from .centered_teacher_loss import CenteredTeacherLoss

__all__ = ['ibot_patch_cross_entropy', 'IBOTPatchLoss']


def ibot_patch_cross_entropy(student_logits: torch.Tensor,
                             teacher_logits: torch.Tensor,
                             center: torch.Tensor,
                             weights: torch.Tensor,
                             student_temp: float = 0.1,
                             teacher_temp: float = 0.07) -> torch.Tensor:
    """iBOT patch loss of matching (same view, same position) student / teacher tokens.

    For view ``v``, sample ``b`` and token ``n``:
    ``ce = -sum_k softmax((t - c) / T_t)_k * log_softmax(s / T_s)_k``; per sample
    ``l_vb = sum_n w_vbn ce_vbn / max(sum_n w_vbn, 1)``; result ``mean_v mean_b l_vb``. As in iBOT,
    samples without any weighted token contribute 0 to the batch mean (iBOT's
    ``mask.sum(-1).clamp(min=1.0)``).

    Args:
        student_logits (Tensor): [V, B, N, K].
        teacher_logits (Tensor): [V, B, N, K] (detached here).
        center (Tensor): [K] or [1, K] teacher centre.
        weights (Tensor): [V, B, N] bool or float token weights (iBOT: the MIM mask).
        student_temp (float): Defaults to 0.1.
        teacher_temp (float): Defaults to 0.07.

    Returns:
        Tensor: scalar (float32).
    """
    if student_logits.dim() != 4 or student_logits.shape != teacher_logits.shape:
        raise ValueError('student_logits and teacher_logits must both be [V, B, N, K] of equal '
                         f'shape, got {tuple(student_logits.shape)} and '
                         f'{tuple(teacher_logits.shape)}')
    if tuple(weights.shape) != tuple(student_logits.shape[:3]):
        raise ValueError(f'weights must be [V, B, N] = {tuple(student_logits.shape[:3])}, got '
                         f'{tuple(weights.shape)}')
    if student_temp <= 0 or teacher_temp <= 0:
        raise ValueError(f'temperatures must be > 0, got student_temp={student_temp}, '
                         f'teacher_temp={teacher_temp}')
    center = center.reshape(1, 1, 1, -1).float()
    t_prob = F.softmax((teacher_logits.detach().float() - center) / teacher_temp, dim=-1)
    s_logp = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    ce = -(t_prob * s_logp).sum(dim=-1)  # [V, B, N]
    w = weights.to(ce.dtype)
    per_sample = (ce * w).sum(dim=-1) / w.sum(dim=-1).clamp(min=1.0)
    return per_sample.mean(dim=1).mean()


@MODELS.register_module()
class IBOTPatchLoss(CenteredTeacherLoss):
    """iBOT patch self-distillation loss with its own centre and teacher-temperature warm-up.

    Paper: `Image BERT Pre-Training with Online Tokenizer <https://arxiv.org/abs/2111.07832>`_
    (``iBOTLoss``, the ``loss2`` / ``center2`` part; the [CLS] part is
    :class:`~cotap_mm.models.losses.dino_cls_loss.DINOClsLoss`).

    The centre ``center`` [1, K] is updated after each training call with ``update_center=True``
    by the mean of the teacher logits over views, samples and tokens, averaged over processes
    (``mmengine.dist.all_reduce``): ``c <- m c + (1 - m) mean``. The teacher temperature warms up
    linearly from ``warmup_teacher_temp`` to ``teacher_temp`` over ``warmup_iters`` such calls
    (buffer ``num_updates``). Calls with ``update_center=False`` (the de-coupling / de-positioning
    terms of the same step) use the current centre and temperature and change nothing.

    Args:
        out_dim (int): K, the patch head width. Defaults to 8192.
        student_temp (float): Defaults to 0.1.
        teacher_temp (float): Defaults to 0.07.
        warmup_teacher_temp (float): Defaults to 0.04.
        warmup_iters (int): Defaults to 0.
        center_momentum (float): Defaults to 0.9.
        loss_weight (float): iBOT's lambda2. Defaults to 1.0.

    ``forward(student_logits [V, B, N, K], teacher_logits [V, B, N, K], weights [V, B, N],
    update_center=True) -> scalar`` (times ``loss_weight``); :meth:`cross_entropy` is the same
    without the weight and without updates; :meth:`step` does the updates alone.
    """

    def __init__(self,
                 out_dim: int = 8192,
                 student_temp: float = 0.1,
                 teacher_temp: float = 0.07,
                 warmup_teacher_temp: float = 0.04,
                 warmup_iters: int = 0,
                 center_momentum: float = 0.9,
                 loss_weight: float = 1.0) -> None:
        super().__init__(out_dim, student_temp, teacher_temp, warmup_teacher_temp, warmup_iters,
                         center_momentum, loss_weight)

    def cross_entropy(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      weights: torch.Tensor) -> torch.Tensor:
        """Unweighted :func:`ibot_patch_cross_entropy` with the current centre / temperature."""
        if student_logits.shape[-1] != self.out_dim:
            raise ValueError(f'logits must have last dimension out_dim={self.out_dim}, got '
                             f'{tuple(student_logits.shape)}')
        return ibot_patch_cross_entropy(student_logits, teacher_logits, self.center, weights,
                                        self.student_temp, self.current_teacher_temp())

    @torch.no_grad()
    def step(self, teacher_logits: torch.Tensor) -> None:
        """End of a training step (only in training mode): centre update with
        ``teacher_logits`` [..., K] and one more warm-up step. For callers that compute their
        terms with :meth:`cross_entropy`."""
        if self.training:
            self.update_center(teacher_logits)
            self.count_update()

    def forward(self,
                student_logits: torch.Tensor,
                teacher_logits: torch.Tensor,
                weights: torch.Tensor,
                update_center: Optional[bool] = True) -> torch.Tensor:
        loss = self.cross_entropy(student_logits, teacher_logits, weights)
        if update_center:
            self.step(teacher_logits)
        return self.loss_weight * loss

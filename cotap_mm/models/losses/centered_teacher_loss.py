"""Common part of the DINO-style losses with a centred, sharpened teacher.

DINO (`arXiv 2104.14294 <https://arxiv.org/abs/2104.14294>`_) and iBOT
(`arXiv 2111.07832 <https://arxiv.org/abs/2111.07832>`_): the teacher logits are centred by an EMA
of their batch mean and sharpened by a temperature that warms up linearly. Base class of
:class:`~cotap_mm.models.losses.dino_cls_loss.DINOClsLoss` and
:class:`~cotap_mm.models.losses.ibot_patch_loss.IBOTPatchLoss`; the math is in
:mod:`cotap_mm.models.losses.functional.teacher_centering`.
"""
import torch
import torch.nn as nn

from ..utils.host_state import HostMirrorMixin
from .functional.teacher_centering import teacher_temperature, update_center_

__all__ = ['CenteredTeacherLoss']


class CenteredTeacherLoss(HostMirrorMixin, nn.Module):
    """Base class (not registered): arguments, the centre buffer ``center`` [1, K] (saved /
    resumed) and the warm-up counter buffer ``num_updates``.

    Args:
        out_dim (int): K, the head width (positive int).
        student_temp (float): > 0.
        teacher_temp (float): > 0.
        warmup_teacher_temp (float): > 0.
        warmup_iters (int): warm-up length in counted calls (non-negative int).
        center_momentum (float): in [0, 1].
        loss_weight (float): multiplier of the loss.

    Raises:
        ValueError: naming the first bad argument.
    """

    def __init__(self, out_dim: int, student_temp: float, teacher_temp: float,
                 warmup_teacher_temp: float, warmup_iters: int, center_momentum: float,
                 loss_weight: float) -> None:
        super().__init__()
        if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1:
            raise ValueError(f'out_dim must be a positive int, got {out_dim!r}')
        for name, val in (('student_temp', student_temp), ('teacher_temp', teacher_temp),
                          ('warmup_teacher_temp', warmup_teacher_temp)):
            if not val > 0:
                raise ValueError(f'{name} must be > 0, got {val!r}')
        if isinstance(warmup_iters, bool) or not isinstance(warmup_iters, int) or warmup_iters < 0:
            raise ValueError(f'warmup_iters must be a non-negative int, got {warmup_iters!r}')
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f'center_momentum must be in [0, 1], got {center_momentum!r}')
        self.out_dim = out_dim
        self.student_temp = float(student_temp)
        self.teacher_temp = float(teacher_temp)
        self.warmup_teacher_temp = float(warmup_teacher_temp)
        self.warmup_iters = int(warmup_iters)
        self.center_momentum = float(center_momentum)
        self.loss_weight = float(loss_weight)
        self.register_buffer('center', torch.zeros(1, out_dim))
        self.register_mirrored_buffer('num_updates', 0)  # host copy: no sync per step

    def current_teacher_temp(self) -> float:
        """:func:`teacher_temperature` at step ``num_updates``."""
        return teacher_temperature(self.host_value('num_updates'), self.teacher_temp,
                                   self.warmup_teacher_temp, self.warmup_iters)

    def count_update(self) -> None:
        """Advance the warm-up counter ``num_updates`` by one."""
        self.set_host_value('num_updates', self.host_value('num_updates') + 1)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """``c <- m c + (1 - m) * mean of teacher_logits [..., K]`` over all leading dimensions
        (views, samples, tokens) and processes (:func:`update_center_`)."""
        update_center_(self.center, teacher_logits, self.center_momentum)

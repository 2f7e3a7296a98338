"""DINO / iBOT teacher sharpening: the temperature warm-up and the centre update.

DINO (`arXiv 2104.14294 <https://arxiv.org/abs/2104.14294>`_) and iBOT
(`arXiv 2111.07832 <https://arxiv.org/abs/2111.07832>`_) centre the teacher logits with an EMA of
their batch mean and warm the teacher temperature up linearly. Shared by
:class:`~cotap_mm.models.losses.dino_cls_loss.DINOClsLoss` (CLS tokens) and
:class:`~cotap_mm.models.losses.ibot_patch_loss.IBOTPatchLoss` (patch tokens).
"""
import torch
from mmengine.dist import all_reduce

__all__ = ['teacher_temperature', 'update_center_']


def teacher_temperature(step: int, temp: float = 0.07, warmup_temp: float = 0.04,
                        warmup_iters: int = 0) -> float:
    """DINO's teacher temperature: linear from ``warmup_temp`` to ``temp`` over ``warmup_iters``.

    Returns ``temp`` for ``step >= warmup_iters`` (and always when ``warmup_iters == 0``).
    """
    if warmup_iters <= 0 or step >= warmup_iters:
        return float(temp)
    step = max(int(step), 0)
    return float(warmup_temp + (temp - warmup_temp) * step / warmup_iters)


@torch.no_grad()
def update_center_(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float) -> None:
    """In place: ``center <- m * center + (1 - m) * mean(teacher_logits)``.

    The mean is over every leading dimension (views, samples, tokens) and over processes
    (``mmengine.dist.all_reduce``, a no-op when not distributed).

    Args:
        center (Tensor): [1, K] float buffer, updated in place.
        teacher_logits (Tensor): [..., K] teacher head outputs (detached here).
        momentum (float): m in [0, 1].
    """
    batch_center = teacher_logits.detach().float().reshape(-1, center.shape[-1]).mean(
        dim=0, keepdim=True)
    all_reduce(batch_center, op='mean')
    center.mul_(momentum).add_(batch_center * (1 - momentum))


"""DINO / iBOT teacher sharpening: the temperature warm-up and the centre update.

DINO (`arXiv 2104.14294 <https://arxiv.org/abs/2104.14294>`_) and iBOT
(`arXiv 2111.07832 <https://arxiv.org/abs/2111.07832>`_) centre the teacher logits with an EMA of
their batch mean and warm the teacher temperature up linearly; :func:`teacher_collapse_stats`
gives the quantities DINO monitors to detect collapse. Shared by
:class:`~cotap_mm.models.losses.dino_cls_loss.DINOClsLoss` (CLS tokens) and
:class:`~cotap_mm.models.losses.ibot_patch_loss.IBOTPatchLoss` (patch tokens).
"""
from typing import Dict, Sequence, Tuple

import torch
from mmengine.dist import all_reduce

__all__ = ['teacher_temperature', 'update_center_', 'teacher_collapse_stats']


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



@torch.no_grad()
def teacher_collapse_stats(teacher_probs: torch.Tensor, student_log_probs: torch.Tensor,
                           pairs: Sequence[Tuple[int, int]]) -> Dict[str, torch.Tensor]:
    """The collapse diagnostics of DINO's Fig. 7: teacher entropy and teacher-student KL.

    DINO (`arXiv 2104.14294 <https://arxiv.org/abs/2104.14294>`_, Sec. 5.3) tells its two collapse
    modes apart with these: **collapse to a uniform output** (sharpening too weak): the teacher's
    per-sample entropy goes to ``ln K`` and the KL to 0; **collapse to one dimension** (centring
    too weak): the per-sample entropy goes to 0, the KL to 0, and so does the entropy of the
    batch-mean distribution. Healthy training keeps the per-sample entropy well below ``ln K``,
    the marginal entropy near ``ln K`` and the KL away from 0.

    Args:
        teacher_probs (Tensor): [Vt, B, K] sharpened, centred teacher distributions.
        student_log_probs (Tensor): [Vs, B, K] student log-probabilities.
        pairs (Sequence[tuple[int, int]]): ``(teacher view, student view)`` pairs of the loss.

    Returns:
        dict[str, Tensor]: float32 scalars, on this process's batch: ``teacher_entropy`` (mean
        per-sample entropy of the teacher, nats), ``teacher_marginal_entropy`` (entropy of the
        teacher distribution averaged over views and samples) and ``kl`` (mean over pairs and
        samples of ``KL(P_t || P_s)``).
    """
    t = teacher_probs.detach().float()
    s = student_log_probs.detach().float()
    log_t = t.clamp_min(1e-12).log()
    entropy = -(t * log_t).sum(-1).mean()
    marginal = t.reshape(-1, t.shape[-1]).mean(0)
    marginal_entropy = -(marginal * marginal.clamp_min(1e-12).log()).sum()
    kl = sum((t[ti] * (log_t[ti] - s[si])).sum(-1).mean() for ti, si in pairs) / len(pairs)
    return dict(teacher_entropy=entropy, teacher_marginal_entropy=marginal_entropy,
                kl=torch.as_tensor(kl, dtype=torch.float32))

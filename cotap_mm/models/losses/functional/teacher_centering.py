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

from .sinkhorn import mean_code_entropy

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
def teacher_collapse_stats(teacher_probs: torch.Tensor, pairs: Sequence[Tuple[int, int]],
                           cross_entropy: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The collapse diagnostics of DINO's Fig. 7: teacher entropy and teacher-student KL.

    DINO (`arXiv 2104.14294 <https://arxiv.org/abs/2104.14294>`_, Sec. 5.3) tells its two collapse
    modes apart with these: **collapse to a uniform output** (sharpening too weak): the teacher's
    per-sample entropy goes to ``ln K`` and the KL to 0; **collapse to one dimension** (centring
    too weak): the per-sample entropy goes to 0, the KL to 0, and so does the entropy of the
    batch-mean distribution. Healthy training keeps the per-sample entropy well below ``ln K``,
    the marginal entropy near ``ln K`` and the KL away from 0.

    The KL is not recomputed over the pairs: ``KL(P_t || P_s) = H(P_t, P_s) - H(P_t)``, and the
    loss already is the mean cross-entropy ``H(P_t, P_s)`` over the pairs.

    Args:
        teacher_probs (Tensor): [Vt, B, K] sharpened, centred teacher distributions.
        pairs (Sequence[tuple[int, int]]): ``(teacher view, student view)`` pairs of the loss.
        cross_entropy (Tensor): the loss before its weight: mean over ``pairs`` of the
            batch-mean ``-sum_k P_t log P_s``.

    Returns:
        dict[str, Tensor]: float32 scalars, on this process's batch: ``teacher_entropy`` (mean
        per-sample entropy of the teacher, nats), ``teacher_marginal_entropy`` (entropy of the
        teacher distribution averaged over views and samples) and ``kl`` (mean over pairs and
        samples of ``KL(P_t || P_s)``).
    """
    t = teacher_probs.detach().float()
    view_entropy = torch.stack([mean_code_entropy(view) for view in t])  # [Vt]
    pair_entropy = view_entropy[[ti for ti, _ in pairs]].mean()
    return dict(teacher_entropy=view_entropy.mean(),
                teacher_marginal_entropy=mean_code_entropy(t.reshape(-1, t.shape[-1]).mean(0)),
                kl=cross_entropy.detach().float() - pair_entropy)

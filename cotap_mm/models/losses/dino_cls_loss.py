"""Image-level self-distillation term (DINO cross-entropy on the CLS head) for CoTAP runs.

CoTAP: "Semantic Concentration for Self-Supervised Dense Representations Learning",
https://arxiv.org/abs/2509.09429. The official CoTAP CLS terms are SwAV/Sinkhorn-style with queues;
this module is the simpler DINO (https://arxiv.org/abs/2104.14294) loss, so that a CoTAP run keeps
an image-level objective on its own.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS

from .centered_teacher_loss import CenteredTeacherLoss
from .functional.crop_pairs import different_crop_pairs
from .functional.sinkhorn import sinkhorn_knopp
from .functional.teacher_centering import teacher_collapse_stats, teacher_temperature

# teacher_temperature lives in functional.teacher_centering; re-exported here (public name)
__all__ = ['CENTERINGS', 'dino_distributions', 'teacher_temperature',
           'DINOClsLoss', 'collapse_log_vars']

#: How the teacher targets are made: DINO's EMA centre, or DINOv2's Sinkhorn-Knopp.
CENTERINGS = ('ema', 'sinkhorn_knopp')


def dino_distributions(student_logits: torch.Tensor,
                       teacher_logits: torch.Tensor,
                       center: torch.Tensor,
                       student_temp: float = 0.1,
                       teacher_temp: float = 0.07,
                       student_view_ids: Optional[Sequence[int]] = None,
                       teacher_view_ids: Optional[Sequence[int]] = None,
                       centering: str = 'ema',
                       sinkhorn_iters: int = 3
                       ) -> Tuple[torch.Tensor, torch.Tensor, List[Tuple[int, int]]]:
    """The two sides of the DINO loss: the teacher targets (no gradient),
    ``log_softmax(s / T_s)`` and the (teacher view, student view) pairs of different crops.

    Teacher targets: ``centering='ema'`` (DINO): ``softmax((t - c) / T_t)``;
    ``'sinkhorn_knopp'`` (DINOv2, https://arxiv.org/abs/2304.07193, ``sinkhorn_knopp_teacher``):
    :func:`sinkhorn_knopp` of the teacher logits of all Vt * B global crops (all processes) with
    ``epsilon = T_t`` and ``sinkhorn_iters`` iterations; ``center`` is not used.

    Args:
        student_logits (Tensor): [Vs, B, K] head outputs of every student crop.
        teacher_logits (Tensor): [Vt, B, K] teacher head outputs (detached here).
        center (Tensor): [K] or [1, K] teacher centre.
        student_temp, teacher_temp (float): T_s, T_t.
        student_view_ids / teacher_view_ids (Sequence[int], optional): crop index of each view
            (default ``range(V)``); pairs of the same crop are skipped, as in DINO.
        centering (str): one of :data:`CENTERINGS`. Defaults to 'ema'.
        sinkhorn_iters (int): Defaults to 3 (DINOv2).

    Returns:
        tuple: teacher probabilities [Vt, B, K] and student log-probabilities [Vs, B, K]
        (float32), and the pairs (:func:`different_crop_pairs`).
    """
    if student_logits.dim() != 3 or teacher_logits.dim() != 3:
        raise ValueError('student_logits and teacher_logits must be [views, B, K], got '
                         f'{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}')
    if student_logits.shape[1:] != teacher_logits.shape[1:]:
        raise ValueError('student_logits and teacher_logits must agree in [B, K], got '
                         f'{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}')
    if student_temp <= 0 or teacher_temp <= 0:
        raise ValueError(f'temperatures must be > 0, got student_temp={student_temp}, '
                         f'teacher_temp={teacher_temp}')
    pairs = different_crop_pairs(student_logits.shape[0], teacher_logits.shape[0],
                                 student_view_ids, teacher_view_ids, target='teacher')
    if centering == 'ema':
        center = center.reshape(1, 1, -1).float()
        t_prob = F.softmax((teacher_logits.detach().float() - center) / teacher_temp, dim=-1)
    elif centering == 'sinkhorn_knopp':
        t_prob = sinkhorn_knopp(teacher_logits.reshape(-1, teacher_logits.shape[-1]),
                                epsilon=teacher_temp, iters=sinkhorn_iters)
        t_prob = t_prob.reshape(teacher_logits.shape)
    else:
        raise ValueError(f'centering must be one of {CENTERINGS}, got {centering!r}')
    s_logp = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    return t_prob, s_logp, pairs


def _pair_cross_entropy(t_prob: torch.Tensor, s_logp: torch.Tensor,
                        pairs: Sequence[Tuple[int, int]]) -> torch.Tensor:
    """Mean over pairs of the batch-mean ``-sum_k t_k log s_k``."""
    total = s_logp.new_zeros((), dtype=torch.float32)
    for ti, si in pairs:
        total = total + (-(t_prob[ti] * s_logp[si]).sum(dim=-1)).mean()
    return total / len(pairs)


@MODELS.register_module()
class DINOClsLoss(CenteredTeacherLoss):
    """DINO self-distillation loss with a centred, sharpened teacher (CoTAP's image-level term).

    Paper: `Semantic Concentration for Self-Supervised Dense Representations Learning
    <https://arxiv.org/abs/2509.09429>`_ (image-level terms) and DINO
    (https://arxiv.org/abs/2104.14294). Our choice: the official CoTAP image-level terms use
    Sinkhorn codes with a queue; DINO's centring is used instead (simpler, no queue), because the
    initialisations (DINO, iBOT) were trained with it.

    The centre ``center`` [1, K] is a buffer (saved / resumed). After each training forward it is
    updated with the batch mean of the teacher logits, averaged over processes with
    ``mmengine.dist.all_reduce`` (a no-op when not distributed):
    ``c <- m c + (1 - m) mean(teacher)``. The teacher temperature warms up linearly from
    ``warmup_teacher_temp`` to ``teacher_temp`` over ``warmup_iters`` calls (counted by the buffer
    ``num_updates``).

    Args:
        out_dim (int): K, the CLS head width. Defaults to 4096.
        student_temp (float): Defaults to 0.1.
        teacher_temp (float): Defaults to 0.07.
        warmup_teacher_temp (float): Defaults to 0.04.
        warmup_iters (int): Defaults to 0 (no warm-up; CoTAP post-pretrains a trained DINO).
        center_momentum (float): Defaults to 0.9.
        loss_weight (float): Defaults to 1.0.
        centering (str): 'ema' (DINO, default) or 'sinkhorn_knopp' (DINOv2's teacher targets:
            Sinkhorn-Knopp with ``epsilon`` = the teacher temperature; the centre is then neither
            used nor updated). See :func:`dino_distributions`. Our addition: DINO does not have
            it; it is an option for small batches (docs/benchmarks.md, "The DINO start
            collapses").
        sinkhorn_iters (int): Sinkhorn iterations for 'sinkhorn_knopp'. Defaults to 3.

    ``forward(student_logits [Vs, B, K], teacher_logits [Vt, B, K], student_view_ids=None,
    teacher_view_ids=None) -> scalar``.

    After each training forward, ``last_stats`` holds DINO's collapse diagnostics of that batch
    (:func:`~cotap_mm.models.losses.functional.teacher_centering.teacher_collapse_stats`:
    ``teacher_entropy``, ``teacher_marginal_entropy``, ``kl``); the DINO and SCFS algorithms put
    them in the MMEngine log as ``dino_teacher_entropy`` etc. A per-sample teacher entropy near
    ``ln K`` with a KL near 0 is DINO's collapse to the uniform output.
    """

    def __init__(self,
                 out_dim: int = 4096,
                 student_temp: float = 0.1,
                 teacher_temp: float = 0.07,
                 warmup_teacher_temp: float = 0.04,
                 warmup_iters: int = 0,
                 center_momentum: float = 0.9,
                 loss_weight: float = 1.0,
                 centering: str = 'ema',
                 sinkhorn_iters: int = 3) -> None:
        super().__init__(out_dim, student_temp, teacher_temp, warmup_teacher_temp, warmup_iters,
                         center_momentum, loss_weight)
        if centering not in CENTERINGS:
            raise ValueError(f'centering must be one of {CENTERINGS}, got {centering!r}')
        if isinstance(sinkhorn_iters, bool) or not isinstance(sinkhorn_iters, int) \
                or sinkhorn_iters < 1:
            raise ValueError(f'sinkhorn_iters must be an int >= 1, got {sinkhorn_iters!r}')
        self.centering = centering
        self.sinkhorn_iters = sinkhorn_iters
        self.last_stats: Dict[str, torch.Tensor] = {}

    def forward(self,
                student_logits: torch.Tensor,
                teacher_logits: torch.Tensor,
                student_view_ids: Optional[Sequence[int]] = None,
                teacher_view_ids: Optional[Sequence[int]] = None) -> torch.Tensor:
        if student_logits.shape[-1] != self.out_dim or teacher_logits.shape[-1] != self.out_dim:
            raise ValueError(f'logits must have last dimension out_dim={self.out_dim}, got '
                             f'{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}')
        t_prob, s_logp, pairs = dino_distributions(student_logits, teacher_logits, self.center,
                                                   self.student_temp, self.current_teacher_temp(),
                                                   student_view_ids, teacher_view_ids,
                                                   self.centering, self.sinkhorn_iters)
        loss = _pair_cross_entropy(t_prob, s_logp, pairs)
        if self.training:
            self.last_stats = teacher_collapse_stats(t_prob, pairs, loss)
            if self.centering == 'ema':
                self.update_center(teacher_logits)
            self.count_update()
        return self.loss_weight * loss


def collapse_log_vars(loss: torch.nn.Module, prefix: str) -> Dict[str, torch.Tensor]:
    """``loss.last_stats`` (DINO's collapse diagnostics of the last training batch) with
    ``prefix`` on the keys, for an algorithm's returned dict: MMEngine logs every entry but sums
    only keys holding ``'loss'``, and none of these do. ``{}`` for a module in eval mode or
    without ``last_stats`` (another loss type configured in its place)."""
    if not loss.training:
        return {}
    return {f'{prefix}{k}': v for k, v in getattr(loss, 'last_stats', {}).items()}

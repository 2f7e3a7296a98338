"""De-coupling: student rows whose RCC region (or its complement) holds another image's tokens.

Paper: `De-coupling and De-positioning Dense Self-supervised Learning
<https://arxiv.org/abs/2303.16947>`_ and its ICLR-2024 successor `Mind Your Augmentation: The Key
to Decoupling Dense Self-Supervised Learning <https://openreview.net/forum?id=WQYHbr36Fo>`_. A
switchable add-on of CoTAP and DDSSLiBOT; the token substitution itself is
:func:`~cotap_mm.models.backbones.token_edits.substitute_tokens`, run by
:meth:`CoTAPViT.forward_tokens`.
"""
import math
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..backbones.token_edits import foreign_index

__all__ = ['DecouplingPlan', 'plan_decoupling', 'DecouplingBatch', 'DecouplingBranch',
           'masks_from_data_samples']


class DecouplingPlan(NamedTuple):
    """Which images / masks form the de-coupling samples (same images in every view).

    source_index: LongTensor [E], batch rows duplicated (the last E rows of the batch).
    donor_index: LongTensor [E], batch rows whose tokens are pasted in (:func:`foreign_index`).
    replace: BoolTensor [G, E, N], True = token replaced by the donor's.
    """
    source_index: torch.Tensor
    donor_index: torch.Tensor
    replace: torch.Tensor


def plan_decoupling(masks: torch.Tensor, sample_ratio: float = 0.25) -> Optional[DecouplingPlan]:
    """Build the de-coupling samples as the successor's ``main_ibot.py``.

    Pool = the non-empty masks of all views, view-major (view 0's samples, then view 1's, ...).
    ``n = floor(floor(sample_ratio * B) / 2)`` (reduced until the pool holds ``2 n G`` masks); per
    view ``g`` the pool slice ``[2 n g, 2 n (g + 1))`` gives ``E = 2 n`` samples: the first ``n``
    replace the cut region (``replace = m``), the next ``n`` its complement (``replace = ~m``).
    The images are the last ``E`` rows of the batch; the foreign tokens come from
    :func:`foreign_index` (reverse batch order). For B = 64, G = 2 and 0.25: n = 8, 16 extra
    samples per view, 32 masks used, as in the official code.

    Args:
        masks (BoolTensor): [G, B, N] RCC masks (True = cut).
        sample_ratio (float): in [0, 1]. Defaults to 0.25.

    Returns:
        DecouplingPlan | None: None when no sample can be built (n = 0).
    """
    if masks.dim() != 3 or masks.dtype != torch.bool:
        raise ValueError(f'masks must be a bool tensor [G, B, N], got {masks.dtype} '
                         f'{tuple(masks.shape)}')
    if not 0.0 <= float(sample_ratio) <= 1.0:
        raise ValueError(f'sample_ratio must be in [0, 1], got {sample_ratio!r}')
    G, B, N = masks.shape
    if B < 2:
        return None
    pool = masks.reshape(G * B, N)
    pool = pool[pool.any(dim=1)]
    n = min(int(math.floor(sample_ratio * B)) // 2, pool.shape[0] // (2 * G))
    if n == 0:
        return None
    E = 2 * n
    chosen = pool[:G * E].reshape(G, E, N)
    replace = torch.cat([chosen[:, :n], ~chosen[:, n:]], dim=1)
    source = torch.arange(B - E, B, device=masks.device)
    return DecouplingPlan(source, foreign_index(source, B), replace)


class DecouplingBatch(NamedTuple):
    """Student rows with the de-coupling samples appended.

    images: [G * B + G * E, 3, H, W]: view 0..G-1 batches, then view 0..G-1 de-coupling rows.
    replace: BoolTensor [G * B + G * E, N] (False on the normal rows).
    donor_index: LongTensor [G * B + G * E], rows of ``images`` (donors are normal rows of the
        same view).
    plan: the :class:`DecouplingPlan` or None (E = 0).
    num_views, batch_size, num_extra: G, B, E.
    """
    images: torch.Tensor
    replace: torch.Tensor
    donor_index: torch.Tensor
    plan: Optional[DecouplingPlan]
    num_views: int
    batch_size: int
    num_extra: int


class DecouplingBranch:
    """The successor's de-coupling branch as a reusable component (no parameters).

    Paper: arXiv 2303.16947 / ICLR-2024 successor (``--dc_sample_ratio 0.25 --dc_ratio 0.3``).
    Use::

        dc = DecouplingBranch(prob=0.25, loss_weight=0.3)
        batch = dc.build(global_views, masks)            # masks [G, B, N] from RCC
        tokens, hw = embed_with_edits(backbone, batch.images, batch.replace, batch.donor_index)
        ...                                              # rest of the student, patch head
        normal, extra = dc.split(student_patch_logits, batch)   # [G, B, ...], [G, E, ...]
        loss_dc = dc.loss(patch_loss_fn, extra, teacher_patch_logits, batch)

    Args:
        prob (float): ``dc_sample_ratio``: about ``prob * B`` extra samples per view. Defaults
            to 0.25.
        loss_weight (float): weight of the kept-token dense loss. Defaults to 0.3.
    """

    def __init__(self, prob: float = 0.25, loss_weight: float = 0.3) -> None:
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f'decoupling prob must be in [0, 1], got {prob!r}')
        self.prob = float(prob)
        self.loss_weight = float(loss_weight)

    def build(self, views: Sequence[torch.Tensor], masks: torch.Tensor) -> DecouplingBatch:
        """Stack the G view batches [B, 3, H, W] and append the de-coupling rows."""
        G = len(views)
        if G == 0 or tuple(masks.shape[:2]) != (G, views[0].shape[0]):
            raise ValueError(f'masks must be [G, B, N] for G={G} views of batch '
                             f'{views[0].shape[0] if G else 0}, got {tuple(masks.shape)}')
        B, N = int(masks.shape[1]), int(masks.shape[2])
        plan = plan_decoupling(masks, self.prob) if self.prob > 0 else None
        device = views[0].device
        rows = list(views)
        replace = [torch.zeros(G * B, N, dtype=torch.bool, device=device)]
        donors = [torch.arange(G * B, device=device)]
        E = 0
        if plan is not None:
            E = int(plan.source_index.numel())
            src, don = plan.source_index.to(device), plan.donor_index.to(device)
            rows += [v[src] for v in views]
            replace.append(plan.replace.to(device).reshape(G * E, N))
            donors += [g * B + don for g in range(G)]
        return DecouplingBatch(torch.cat(rows), torch.cat(replace), torch.cat(donors), plan, G,
                               B, E)

    @staticmethod
    def split(x: torch.Tensor, batch: DecouplingBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """Rows [G * B + G * E, ...] -> normal [G, B, ...] and de-coupling [G, E, ...]."""
        G, B, E = batch.num_views, batch.batch_size, batch.num_extra
        if x.shape[0] < G * (B + E):
            raise ValueError(f'expected at least {G * (B + E)} rows, got {x.shape[0]}')
        normal = x[:G * B].reshape(G, B, *x.shape[1:])
        extra = x[G * B:G * (B + E)].reshape(G, E, *x.shape[1:])
        return normal, extra

    def loss(self, loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
             student_extra: torch.Tensor, teacher_normal: torch.Tensor,
             batch: DecouplingBatch) -> torch.Tensor:
        """``loss_weight * loss_fn(student [G, E, N, K], teacher [G, E, N, K], keep [G, E, N])``.

        The teacher targets are the clean-view teacher outputs of the source images; ``keep`` =
        tokens that kept their own content (``~replace``). With E = 0 a zero that keeps
        ``student_extra`` in the graph.
        """
        if batch.plan is None:
            return student_extra.sum() * 0.0
        src = batch.plan.source_index.to(teacher_normal.device)
        keep = ~batch.plan.replace.to(student_extra.device)
        return self.loss_weight * loss_fn(student_extra, teacher_normal[:, src], keep)


def masks_from_data_samples(data_samples: Sequence, key: str, num_views: int,
                            hw: Optional[Sequence[int]] = None,
                            device: Union[str, torch.device] = 'cpu') -> torch.Tensor:
    """Stack ``data_sample.<key>`` ([>= G, h, w] per sample, numpy or tensor) into [G, B, N].

    ``hw`` defaults to the first sample's grid; every sample must have it.
    """
    if not data_samples:
        raise ValueError('masks_from_data_samples needs a non-empty list of data samples')
    out = []
    for i, ds in enumerate(data_samples):
        if key not in ds:
            raise KeyError(f'data_samples[{i}] has no field {key!r}: add RegionCollaborativeCutout '
                           f"to the pipeline and pack it (algorithm_keys=['{key}'])")
        m = torch.as_tensor(np.asarray(ds.get(key)) if not isinstance(ds.get(key), torch.Tensor)
                            else ds.get(key))
        if hw is None:
            hw = tuple(int(v) for v in m.shape[-2:])
        if m.dim() != 3 or m.shape[0] < num_views or tuple(m.shape[1:]) != tuple(hw):
            raise ValueError(f'data_samples[{i}].{key} must be [>= {num_views}, {hw[0]}, {hw[1]}]'
                             f', got {tuple(m.shape)}')
        out.append(m[:num_views].bool().reshape(num_views, -1))
    return torch.stack(out, dim=1).to(device)

"""Student rows of the de-coupling / de-positioning add-ons, appended to the normal view rows.

Both add-ons need the student to see extra images (token-substituted copies, pasted composites)
in the same forward as the normal views: :func:`stack_extra_rows` builds the rows and the token
edits once for every algorithm that offers them (CoTAP, DDSSLiBOT); the algorithm runs them
through :meth:`CoTAPViT.forward_tokens` and slices its outputs with the returned offsets.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from mmpretrain.structures import DataSample

from .decoupling import DecouplingBatch, DecouplingBranch
from .depositioning import DepositioningBatch, DepositioningBranch

__all__ = ['ExtraRows', 'stack_extra_rows']


class ExtraRows(NamedTuple):
    """The stacked student rows and where each part lies.

    images: [G * B + G * E + sum(K), 3, H, W]: the G view batches, the de-coupling rows, then
        the de-positioning composites of each view.
    replace: BoolTensor [R, N] token substitution (False outside the de-coupling rows); None
        when there are no de-coupling rows (no token is edited).
    donor_index: LongTensor [R] donor row of every row (itself outside the de-coupling rows);
        None with ``replace``.
    decoupling: the :class:`DecouplingBatch` built on the sub-batch, or None (no rows).
    num_extra: E, de-coupling rows per view.
    depositioning: ``(view g, first row, DepositioningBatch)`` per view with composites.
    """
    images: torch.Tensor
    replace: Optional[torch.Tensor]
    donor_index: Optional[torch.Tensor]
    decoupling: Optional[DecouplingBatch]
    num_extra: int
    depositioning: List[Tuple[int, int, DepositioningBatch]]


def stack_extra_rows(views: Sequence[torch.Tensor], hw: Tuple[int, int],
                     decoupling: Optional[DecouplingBranch] = None,
                     depositioning: Optional[DepositioningBranch] = None,
                     masks: Optional[torch.Tensor] = None,
                     samples: Optional[List[DataSample]] = None,
                     index: Optional[torch.Tensor] = None) -> ExtraRows:
    """Stack the G view batches [B, 3, H, W] and the add-ons' rows built on a sub-batch.

    Args:
        views (Sequence[Tensor]): G view batches [B, 3, H, W] of one size.
        hw (tuple[int, int]): their patch grid.
        decoupling (DecouplingBranch, optional): None or fewer than 2 images: no rows.
        depositioning (DepositioningBranch, optional): same.
        masks (BoolTensor, optional): [G, b, N] RCC masks of the sub-batch (with
            ``decoupling``).
        samples (list[DataSample], optional): the sub-batch's data samples (object boxes of
            ``depositioning``).
        index (LongTensor, optional): [b] batch positions of the sub-batch; None: all B.

    Returns:
        ExtraRows: the rows; the donors of the de-coupling rows are mapped to full-batch rows.
    """
    G, B = len(views), views[0].shape[0]
    dev = views[0].device
    rows = [torch.cat(list(views))]
    if decoupling is None and depositioning is None:  # no add-on: the view rows only
        return ExtraRows(rows[0], None, None, None, 0, [])
    pos = torch.arange(B, device=dev) if index is None else index.to(dev)
    sub = list(views) if index is None else [v[pos] for v in views]
    bp = int(pos.numel())
    dc, E = None, 0
    if decoupling is not None and bp >= 2:
        if masks is None:
            raise ValueError('stack_extra_rows: decoupling needs the RCC masks [G, b, N]')
        dc = decoupling.build(sub, masks)
        E = dc.num_extra
        if E:
            rows.append(dc.images[G * bp:])
    placed: List[Tuple[int, int, DepositioningBatch]] = []
    offset = G * (B + E)
    if depositioning is not None and bp >= 2:
        for g in range(G):
            dp = depositioning.build(sub[g], hw, g, samples)
            if dp is None:
                continue
            placed.append((g, offset, dp))
            rows.append(dp.images)
            offset += dp.images.shape[0]
    images = torch.cat(rows) if len(rows) > 1 else rows[0]
    if not E:  # nothing substituted: no token edits
        return ExtraRows(images, None, None, None, 0, placed)
    # token edits: only the de-coupling rows take tokens, from full-batch rows of the same view
    n, R = G * bp, images.shape[0]
    replace = torch.zeros(R, dc.replace.shape[1], dtype=torch.bool, device=dev)
    replace[G * B:G * (B + E)] = dc.replace[n:]
    donors = torch.arange(R, device=dev)
    d = dc.donor_index[n:]  # sub-batch rows g * bp + b -> full-batch rows g * B + pos[b]
    donors[G * B:G * (B + E)] = torch.div(d, bp, rounding_mode='floor') * B + pos[d % bp]
    return ExtraRows(images, replace, donors, dc, E, placed)

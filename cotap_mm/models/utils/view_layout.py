"""Reading the view layout that :class:`PackGeometricViews` + ``default_collate`` hand a model.

``inputs`` is a list of ``V + T`` view batches ``[B, 3, H, W]``: the V student views
(``num_global_crops`` = G global crops first, then the local crops) followed by the T clean teacher
views; ``data_samples[0].metainfo`` gives V, T and G, and ``data_samples[0].teacher_view_indices``
(optional, default ``range(T)``) the crop index of every teacher view. Used by
:class:`~cotap_mm.models.algorithms.cotap.CoTAP` and :class:`~cotap_mm.models.algorithms.scfs.SCFS`,
which add their own checks on top.
"""
from typing import List, Sequence, Tuple

import torch
from mmpretrain.structures import DataSample

__all__ = ['packed_view_counts', 'teacher_global_views']

_COUNT_KEYS = ('num_student_views', 'num_teacher_views', 'num_global_crops')


def packed_view_counts(inputs: Sequence[torch.Tensor], data_samples: List[DataSample],
                       who: str, min_global: int = 1) -> Tuple[int, int, int]:
    """``(V, T, G)`` of a packed multi-view batch, checked against ``inputs``.

    Args:
        inputs (Sequence[Tensor]): the V + T view batches [B, 3, H, W].
        data_samples (list[DataSample]): B samples; the first one's metainfo is read.
        who (str): algorithm name for the error messages (e.g. ``'CoTAP'``).
        min_global (int): smallest G the algorithm accepts. Defaults to 1.

    Returns:
        tuple[int, int, int]: V student views, T teacher views, G global crops.

    Raises:
        TypeError: ``inputs`` is not a list / tuple or ``data_samples`` is empty.
        ValueError: a metainfo key is missing, ``len(inputs) != V + T`` or ``G < min_global``.
    """
    if not isinstance(inputs, (list, tuple)) or not data_samples:
        raise TypeError(f'{who}.loss expects inputs as a list of view batches [B, 3, H, W] and '
                        'a non-empty list of data samples (PackGeometricViews + '
                        'default_collate)')
    meta = data_samples[0].metainfo
    for key in _COUNT_KEYS:
        if key not in meta:
            raise ValueError(f'data_samples need metainfo {key!r} (PackGeometricViews)')
    V, T, G = (int(meta[key]) for key in _COUNT_KEYS)
    if len(inputs) != V + T:
        raise ValueError(f'inputs must hold V + T = {V} + {T} views, got {len(inputs)}')
    if G < min_global:
        what = 'one global crop' if min_global == 1 else f'{min_global} global crops'
        raise ValueError(f'{who} needs at least {what}, got num_global_crops={G}')
    return V, T, G


def teacher_global_views(inputs: Sequence[torch.Tensor], data_samples: List[DataSample],
                         V: int, T: int, G: int) -> List[torch.Tensor]:
    """The clean teacher view of each global crop ``0..G-1``, in crop order.

    Args:
        inputs (Sequence[Tensor]): the V + T view batches (teacher views at ``V..V+T-1``).
        data_samples (list[DataSample]): samples; ``teacher_view_indices`` [T] of the first one
            gives the crop index of each teacher view (default ``range(T)``).
        V, T, G (int): from :func:`packed_view_counts`.

    Returns:
        list[Tensor]: G batches [B, 3, H, W].

    Raises:
        ValueError: the teacher views do not include every global crop.
    """
    meta = data_samples[0].metainfo
    if 'teacher_view_order' in meta:  # the host copy: no device sync
        t_ids = list(meta['teacher_view_order'])
    elif 'teacher_view_indices' in data_samples[0]:
        t_ids = [int(i) for i in data_samples[0].teacher_view_indices.tolist()]
    else:
        t_ids = list(range(T))
    pos = {c: i for i, c in enumerate(t_ids)}
    if any(g not in pos for g in range(G)):
        raise ValueError(f'teacher views {t_ids} must include the global crops 0..{G - 1}')
    return [inputs[V + pos[g]] for g in range(G)]

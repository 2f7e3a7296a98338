"""Tiny multi-view batches laid out as PackGeometricViews + default_collate hand them to a model."""
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from mmpretrain.structures import DataSample

from cotap_mm.datasets.transforms.geometric_views import GeometricMultiView


def packed_view_sample(G: int, L: int, crop_boxes: Optional[np.ndarray] = None) -> DataSample:
    """One sample's metainfo for G global + L local student crops and G teacher views (the global
    crops, ``teacher_view_indices = 0..G-1``); with ``crop_boxes`` [G + L, 4] also the boxes and
    no flips."""
    ds = DataSample()
    ds.set_metainfo(dict(num_student_views=G + L, num_teacher_views=G, num_global_crops=G,
                         num_local_crops=L))
    ds.set_field(torch.arange(G), 'teacher_view_indices')
    if crop_boxes is not None:
        ds.set_field(torch.from_numpy(crop_boxes), 'crop_boxes')
        ds.set_field(torch.zeros(G + L, dtype=torch.bool), 'crop_flips')
    return ds


def geometric_view_batch(B: int = 4, G: int = 2, L: int = 2, size: int = 64, local: int = 32,
                         seed: int = 0, noise: float = 0.3,
                         add_fields: Optional[Callable[[DataSample], None]] = None
                         ) -> Tuple[List[torch.Tensor], List[DataSample]]:
    """Random CoTAP inputs: G clean teacher globals [B, 3, size, size], student globals = teacher
    + ``noise`` * N(0, 1), L local crops [B, 3, local, local]; ``inputs = student + teacher``.
    Every sample has the crop boxes of a :class:`GeometricMultiView` draw on a 96 x 96 image;
    ``add_fields(sample)`` may set more fields, sample by sample."""
    g = torch.Generator().manual_seed(seed)
    teacher = [torch.randn(B, 3, size, size, generator=g) for _ in range(G)]
    student = [t + noise * torch.randn(t.shape, generator=g) for t in teacher]
    student += [torch.randn(B, 3, local, local, generator=g) for _ in range(L)]
    sampler = GeometricMultiView(num_global=G, global_size=size, num_local=L, local_size=local,
                                 local_scale=(0.05, 0.2), seed=seed)
    samples = []
    for _ in range(B):
        ds = packed_view_sample(G, L, sampler.sample_boxes(96, 96))
        if add_fields is not None:
            add_fields(ds)
        samples.append(ds)
    return student + teacher, samples


def independent_view_batch(B: int = 2, G: int = 2, L: int = 2, size: int = 64, local: int = 32,
                           seed: int = 0) -> Tuple[List[torch.Tensor], List[DataSample]]:
    """Random DINO / SCFS inputs: G student globals [B, 3, size, size], L locals
    [B, 3, local, local], then G packed teacher copies drawn independently of the student views
    (so a model that reads them is told apart from one that does not); no crop boxes."""
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(B, 3, size, size, generator=g) for _ in range(G)]
    views += [torch.randn(B, 3, local, local, generator=g) for _ in range(L)]
    views += [torch.randn(B, 3, size, size, generator=g) for _ in range(G)]
    return views, [packed_view_sample(G, L) for _ in range(B)]

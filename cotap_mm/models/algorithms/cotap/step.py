"""What one CoTAP training step computes once and its loss terms share.

:class:`CoTAPStep` holds the views, the source sub-batches, the student and teacher features and
the teacher foreground; the functions here fill it. Every term (``terms_*.py``) reads it and adds
its losses; nothing here computes a loss.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log
from mmpretrain.structures import DataSample

from ...losses.functional.sinkhorn import sinkhorn_knopp
from ...utils.extra_rows import ExtraRows
from ...utils.feature_queue import FeatureQueue
from .pair_selection import retrieve_partners

__all__ = ['CoTAPStep', 'PatchFeatures', 'split_batch', 'source_positions', 'find_partners',
           'ranking_anchors', 'crop_geometry', 'head_embed', 'group_by_size', 'loss_enabled',
           'patch_features', 'sinkhorn_codes', 'CoTAPTerm']


@dataclass
class CoTAPStep:
    """The shared state of one step (view-major rows: crop ``g`` of image ``b`` is row g*B+b).

    Attributes filled by :meth:`CoTAP.loss` before the terms run:
        student_views (list[Tensor]): V student views [B, 3, H, W] (G global first).
        data_samples (list[DataSample]): B samples.
        G, B: global crops, batch size.
        p_pos / c_pos (list[int], optional): batch positions of the patch / CLS sources (None:
            every sample), p_idx / c_idx the same as tensors, bp / bc their sizes.
        clustering (bool): Sinkhorn targets are on (``loss_iter >= cluster_start_iter``).
        tokens, hw: student tokens entering the last block of the global crops [G*B, 1+N, C]
            and the patch grid.
        cls_g, patch_g: student filter outputs of the global crops [G*B, 2C], [G*B, N, 2C].
        extra (ExtraRows, optional): the de-coupling / de-positioning rows, and
            extra_patch: their filter outputs [R', N, 2C].
        cls_views (list[Tensor]): student CLS outputs per crop group [n, B, 2C].
        local_patch (list[tuple[Tensor, hw]]): student patch outputs of each local crop.
        zero (Tensor): a graph-connected zero (the value of a term with an empty sub-batch).
        t_tokens, t_cls_g, t_patch: teacher outputs of the global crops.
        fg (Tensor, optional): teacher foreground masks [G*B, h, w].
    Filled by the terms for later ones:
        patch_codes (Tensor, optional): teacher patch codes [G, bp, K, h, w].
    """
    student_views: List[torch.Tensor]
    data_samples: List[DataSample]
    G: int
    B: int
    p_pos: Optional[List[int]]
    c_pos: Optional[List[int]]
    clustering: bool
    tokens: torch.Tensor = None
    hw: Tuple[int, int] = None
    cls_g: torch.Tensor = None
    patch_g: torch.Tensor = None
    extra: Optional[ExtraRows] = None
    extra_patch: Optional[torch.Tensor] = None
    cls_views: List[torch.Tensor] = field(default_factory=list)
    local_patch: List[Tuple[torch.Tensor, Tuple[int, int]]] = field(default_factory=list)
    zero: torch.Tensor = None
    t_tokens: torch.Tensor = None
    t_cls_g: torch.Tensor = None
    t_patch: torch.Tensor = None
    fg: Optional[torch.Tensor] = None
    patch_codes: Optional[torch.Tensor] = None
    cache: Dict[str, object] = field(default_factory=dict)

    @property
    def V(self) -> int:
        return len(self.student_views)

    @property
    def device(self) -> torch.device:
        return self.student_views[0].device

    def __post_init__(self) -> None:
        as_index = (lambda pos: None if pos is None else torch.as_tensor(
            pos, dtype=torch.long, device=self.device))
        self.p_idx, self.c_idx = as_index(self.p_pos), as_index(self.c_pos)

    @property
    def bp(self) -> int:
        return self.B if self.p_pos is None else len(self.p_pos)

    @property
    def bc(self) -> int:
        return self.B if self.c_pos is None else len(self.c_pos)

    def samples(self, pos: Optional[List[int]]) -> List[DataSample]:
        """The data samples of a sub-batch (None: all)."""
        return self.data_samples if pos is None else [self.data_samples[i] for i in pos]


def split_batch(x: torch.Tensor, n: int, B: int, index: Optional[torch.Tensor]) -> torch.Tensor:
    """View-major [n*B, ...] -> [n, b, ...] restricted to the batch positions ``index``."""
    x = x.reshape(n, B, *x.shape[1:])
    return x if index is None else x[:, index]


def group_by_size(views: Sequence[torch.Tensor]) -> List[List[torch.Tensor]]:
    """Consecutive views of the same spatial size, grouped (one forward per group)."""
    groups: List[List[torch.Tensor]] = []
    for v in views:
        if groups and groups[-1][0].shape[-2:] == v.shape[-2:]:
            groups[-1].append(v)
        else:
            groups.append([v])
    return groups


def source_positions(data_samples: List[DataSample], sources: Tuple[str, ...], key: str,
                     warned: set) -> Optional[List[int]]:
    """Batch positions of the samples whose ``key`` field is in ``sources``; None when no sample
    has the field (every sample counts). Warns once per ``sources`` when none matches."""
    has = [key in ds for ds in data_samples]
    if not any(has):
        return None
    if not all(has):
        raise ValueError(f'either all or no data samples must carry {key!r}; missing at batch '
                         f'positions {[i for i, h in enumerate(has) if not h]}')
    idx = [i for i, ds in enumerate(data_samples) if ds.get(key) in sources]
    if not idx and sources not in warned:
        warned.add(sources)
        found = sorted({str(ds.get(key)) for ds in data_samples})
        print_log(f'CoTAP: no sample of the sources {sources} in a batch of sources {found}: '
                  f'the terms fed by {sources} are 0 (set model.patch_sources / cls_sources / '
                  f'bank_sources to match the data, e.g. cls_sources={tuple(found)} for '
                  f'COCO-only data with neighbor_collate)', logger='current',
                  level=logging.WARNING)
    return idx


def find_partners(embeddings: torch.Tensor, data_samples: Optional[List[DataSample]],
                  positions: Optional[List[int]], partner_key: str = 'neighbor_index',
                  source_key: str = 'source') -> torch.Tensor:
    """Partner of each image of the sub-batch ``positions`` (None: the whole batch), as positions
    within the sub-batch: the loaded neighbour (``data_sample.<partner_key>``, a batch position)
    or, without one (-1 or no field), the most similar other image (:func:`retrieve_partners`)."""
    b = embeddings.shape[0]
    full = len(data_samples) if data_samples else b
    pos = list(range(full)) if positions is None else list(positions)
    sub = [data_samples[i] for i in pos] if data_samples else []
    if not sub or not all(partner_key in ds for ds in sub):
        return retrieve_partners(embeddings)
    raw = [int(ds.get(partner_key)) for ds in sub]
    if any(r < -1 or r >= full for r in raw):
        raise ValueError(f'data_sample.{partner_key} must be batch positions in [0, {full}) or '
                         f'-1 (no partner), got {raw}')
    where = {p: k for k, p in enumerate(pos)}
    outside = [r for r in raw if r >= 0 and r not in where]
    if outside:
        raise ValueError(f'data_sample.{partner_key} points to batch positions {outside} outside '
                         f'the sub-batch {pos} of the same sources ({source_key!r}); partners '
                         'must share the source')
    if any(where.get(r) == k for k, r in enumerate(raw)):
        raise ValueError(f'data_sample.{partner_key} must differ from the sample itself, got '
                         f'{raw} for batch positions {pos}')
    idx = torch.as_tensor([where.get(r, -1) for r in raw], dtype=torch.long,
                          device=embeddings.device)
    if min(where.get(r, -1) for r in raw) < 0:  # no partner (neighbor_index -1): retrieval
        idx = torch.where(idx < 0, retrieve_partners(embeddings), idx)
    return idx


def ranking_anchors(data_samples: List[DataSample], positions: Optional[List[int]],
                    device: torch.device) -> Optional[torch.Tensor]:
    """Sub-batch positions of the images ranked as anchors: those that are not a loaded
    neighbour (``is_neighbor``); None when no sample is one (every image is an anchor)."""
    pos = range(len(data_samples)) if positions is None else positions
    flags = [bool(data_samples[i].get('is_neighbor', False)) for i in pos]
    if not any(flags):
        return None
    return torch.as_tensor([k for k, f in enumerate(flags) if not f], dtype=torch.long,
                           device=device)


def crop_geometry(samples: List[DataSample], V: int, device: torch.device
                  ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``crop_boxes`` [b, V, 4] and, when every sample has them, ``crop_flips`` [b, V]."""
    if not samples:
        return torch.zeros(0, V, 4, device=device), None
    if not all('crop_boxes' in ds for ds in samples):
        raise ValueError('loss_patch_cluster needs data_sample.crop_boxes [V, 4] (original-image '
                         'boxes of the crops, from GeometricMultiView + PackGeometricViews); '
                         'disable the term with patch_cluster_loss=None otherwise')
    boxes = torch.stack([torch.as_tensor(ds.crop_boxes, dtype=torch.float32)
                         for ds in samples]).to(device)
    if boxes.shape[1:] != (V, 4):
        raise ValueError(f'data_sample.crop_boxes must be [V, 4] = [{V}, 4], got '
                         f'{tuple(boxes.shape[1:])}')
    flips = None
    if all('crop_flips' in ds for ds in samples):
        flips = torch.stack([torch.as_tensor(ds.crop_flips, dtype=torch.bool)
                             for ds in samples]).to(device)
    return boxes, flips


def head_embed(head: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised bottleneck vectors ``z`` [..., D] and prototype matrix ``W`` [K, D] (both
    float32) of a :class:`DINOProjectionHead`: ``head(x) == z @ W.T``."""
    if not (hasattr(head, 'mlp') and hasattr(head, 'last_layer_weight')):
        raise TypeError(f'the clustering terms need a DINOProjectionHead-like head with `mlp` and '
                        f'`last_layer_weight()`, got {type(head).__name__}')
    z = F.normalize(head.mlp(x).float(), dim=-1)
    return z, head.last_layer_weight().float()


def loss_enabled(loss: Optional[nn.Module]) -> bool:
    """A term is on unless its loss is None or its ``loss_weight`` is 0 / None."""
    if loss is None:
        return False
    weight = getattr(loss, 'loss_weight', 1.0)
    return weight is not None and float(weight) != 0.0


@dataclass
class PatchFeatures:
    """Patch-head outputs of the global crops on the patch sub-batch, shared by the patch terms.

    s_scores: student scores [G, bp, N, K]; t_z / t_w: teacher normalised bottleneck vectors
    [G, bp, N, D] and prototype matrix [K, D] (teacher scores = t_z @ t_w.T); fg_p: teacher
    foreground [G, bp, h, w].
    """
    s_scores: torch.Tensor
    t_z: torch.Tensor
    t_w: torch.Tensor
    fg_p: torch.Tensor


def patch_features(model: nn.Module, step: CoTAPStep) -> PatchFeatures:
    """:class:`PatchFeatures` of the step, computed once (cached in ``step.cache``)."""
    if 'patch' not in step.cache:
        G, B = step.G, step.B
        s_scores = model.patch_head(split_batch(step.patch_g, G, B, step.p_idx))
        with torch.no_grad():
            t_z, t_w = head_embed(model.teacher['patch_head'],
                                  split_batch(step.t_patch, G, B, step.p_idx))
            fg_p = split_batch(step.fg, G, B, step.p_idx)
        step.cache['patch'] = PatchFeatures(s_scores, t_z, t_w, fg_p)
    return step.cache['patch']


@torch.no_grad()
def sinkhorn_codes(z: torch.Tensor, weight: torch.Tensor, queue: Optional[FeatureQueue],
                   cfg: dict) -> torch.Tensor:
    """Codes [n, K] of the rows of ``z`` [n, D]: Sinkhorn (``cfg``: epsilon, iters) over the
    scores ``[queue entries; z] @ weight.T`` in float32, the queue's rows dropped after."""
    z = z.float()
    past = queue.features().to(z) if queue is not None else z.new_zeros((0, z.shape[1]))
    with torch.autocast(device_type=z.device.type, enabled=False):
        scores = torch.cat([past, z]) @ weight.float().t()
    return sinkhorn_knopp(scores, cfg['epsilon'], cfg['iters'])[past.shape[0]:]


class CoTAPTerm:
    """One loss term of CoTAP: reads a :class:`CoTAPStep`, returns its losses (and logged values).

    A term is on when one of the model's losses named in ``loss_attrs`` is
    (:func:`loss_enabled`); ``needs_local_crops`` / ``needs_foreground`` tell the step what to
    compute. A new term is a subclass in its own file, listed in ``terms.TERMS``, with its loss
    built by the model from the config.
    """

    loss_attrs: Tuple[str, ...] = ()
    needs_local_crops = False
    needs_foreground = False

    def enabled(self, model: nn.Module) -> bool:
        return any(loss_enabled(getattr(model, a, None)) for a in self.loss_attrs)

    def before_forward(self, model: nn.Module) -> None:
        """Runs before the step's forward passes (e.g. to change parameters in place)."""

    def __call__(self, model: nn.Module, step: CoTAPStep) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

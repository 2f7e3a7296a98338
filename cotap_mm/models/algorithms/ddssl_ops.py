"""De-coupling and de-positioning for dense self-supervised learning: pure functions + two branches.

Papers: `De-coupling and De-positioning Dense Self-supervised Learning
<https://arxiv.org/abs/2303.16947>`_ (v1: de-coupling + de-positioning modules, SoCo / ResNet-50 C4)
and its ICLR-2024 successor `Mind Your Augmentation: The Key to Decoupling Dense Self-Supervised
Learning <https://openreview.net/forum?id=WQYHbr36Fo>`_ (official code github.com/ztt1024/denseSSL:
Region Collaborative Cutout + a de-coupling branch on iBOT).

Both are switchable add-ons for any dense student / teacher algorithm:

* :class:`DecouplingBranch` (``decoupling=dict(prob=0.25, loss_weight=0.3)``): extra student
  samples whose RCC cut region (or its complement) holds another image's patch tokens; the dense
  loss on the tokens that kept their own content, no image-level loss.
* :class:`DepositioningBranch` (``depositioning=dict(prob=0.25, loss_weight=0.3, ...)``): a region
  of an image pasted onto another image at a new position and scale; the student's box-pooled
  feature of the pasted region is matched to the teacher's box-pooled feature of the same region
  in the clean view (ViT: :func:`box_pool_tokens`; CNN: :func:`roi_align_pool`).

Token edits happen on the output of :meth:`CoTAPViT.embed` (:func:`embed_with_edits`). The
official code edits the patch-embedding tokens *before* the position embedding; because the
position embedding, the (token-wise) ``pre_norm`` and the (zero) dropout act on every position
independently, replacing the embedded token of position ``p`` by the embedded token of the same
position ``p`` of another image is exactly the same operation, and a mask token becomes
``pre_norm(mask_token + pos[p])``.
"""
import math
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmpretrain.models.utils import resize_pos_embed

from cotap_mm.datasets.transforms.region_cutout import sample_grid_box

__all__ = [
    'foreign_index', 'substitute_tokens', 'apply_mask_token', 'embed_with_edits',
    'forward_pre_last_with_edits', 'encode_with_edits', 'plan_decoupling', 'DecouplingPlan', 'DecouplingBatch', 'DecouplingBranch',
    'box_pool_tokens', 'roi_align_pool', 'paste_regions', 'sample_depositioning_boxes',
    'boxes_to_grid', 'DepositioningBatch', 'DepositioningBranch', 'masks_from_data_samples'
]


# ----------------------------------------------------------------------------- token edits
def foreign_index(source: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Donor image of each source row: the batch in reverse order (the official ``x.flip(0)``).

    ``donor = B - 1 - s``; the middle row of an odd batch (``donor == s``) takes ``(s + 1) % B``.

    Args:
        source (LongTensor): [E] rows in ``[0, B)``.
        batch_size (int): B >= 2.

    Returns:
        LongTensor: [E], never equal to ``source``.
    """
    if batch_size < 2:
        raise ValueError(f'a foreign image needs a batch of at least 2 images, got {batch_size}')
    source = source.long()
    if source.numel() and (int(source.min()) < 0 or int(source.max()) >= batch_size):
        raise ValueError(f'source rows must be in [0, {batch_size}), got {source.tolist()}')
    donor = batch_size - 1 - source
    same = donor == source
    return torch.where(same, (source + 1) % batch_size, donor)


def substitute_tokens(tokens: torch.Tensor,
                      replace: torch.Tensor,
                      donor_index: torch.Tensor,
                      num_extra_tokens: int = 1) -> torch.Tensor:
    """Replace patch tokens by the (detached) tokens of another row at the same position.

    ``out[r, e + n] = tokens[donor_index[r], e + n].detach()`` where ``replace[r, n]``, else
    ``tokens[r, e + n]`` (``e = num_extra_tokens``; the CLS token is never replaced).

    Args:
        tokens (Tensor): [R, e + N, C].
        replace (BoolTensor): [R, N], True = take the donor's token.
        donor_index (LongTensor): [R] donor row of every row (ignored where nothing is replaced).
        num_extra_tokens (int): leading non-patch tokens. Defaults to 1.

    Returns:
        Tensor: [R, e + N, C].
    """
    if tokens.dim() != 3:
        raise ValueError(f'tokens must be [R, e + N, C], got shape {tuple(tokens.shape)}')
    R, L, C = tokens.shape
    N = L - num_extra_tokens
    if tuple(replace.shape) != (R, N) or replace.dtype != torch.bool:
        raise ValueError(f'replace must be a bool tensor [R, N] = [{R}, {N}], got '
                         f'{replace.dtype} {tuple(replace.shape)}')
    if tuple(donor_index.shape) != (R, ):
        raise ValueError(f'donor_index must be [R] = [{R}], got {tuple(donor_index.shape)}')
    if not bool(replace.any()):
        return tokens
    donor_index = donor_index.long().to(tokens.device)
    if int(donor_index.min()) < 0 or int(donor_index.max()) >= R:
        raise ValueError(f'donor_index must be rows in [0, {R}), got {donor_index.tolist()}')
    patches = tokens[:, num_extra_tokens:]
    donor = patches.detach()[donor_index]
    patches = torch.where(replace.to(tokens.device)[..., None], donor, patches)
    return torch.cat([tokens[:, :num_extra_tokens], patches], dim=1)


def apply_mask_token(backbone: nn.Module, tokens: torch.Tensor, mask: torch.Tensor,
                     mask_token: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """iBOT masking on embedded tokens: masked positions become ``pre_norm(mask_token + pos[p])``.

    Args:
        backbone (nn.Module): an mmpretrain ``VisionTransformer`` (``pos_embed``,
            ``patch_resolution``, ``interpolate_mode``, ``num_extra_tokens``, ``pre_norm``).
        tokens (Tensor): [R, e + N, C] from ``backbone.embed``.
        mask (BoolTensor): [R, N], True = masked.
        mask_token (Tensor): [C] or [1, C] (or [1, 1, C]) learnable token.
        hw (Sequence[int]): the patch grid (h, w), h * w = N.

    Returns:
        Tensor: [R, e + N, C].
    """
    e = backbone.num_extra_tokens
    R, L, C = tokens.shape
    N = L - e
    if int(hw[0]) * int(hw[1]) != N:
        raise ValueError(f'hw={tuple(hw)} does not match the {N} patch tokens')
    if tuple(mask.shape) != (R, N) or mask.dtype != torch.bool:
        raise ValueError(f'mask must be a bool tensor [R, N] = [{R}, {N}], got {mask.dtype} '
                         f'{tuple(mask.shape)}')
    if mask_token.numel() != C:
        raise ValueError(f'mask_token must hold C={C} values, got shape {tuple(mask_token.shape)}')
    if not bool(mask.any()):
        return tokens
    pos = resize_pos_embed(backbone.pos_embed, backbone.patch_resolution, tuple(hw),
                           mode=backbone.interpolate_mode, num_extra_tokens=e)[:, e:]
    masked = backbone.pre_norm(mask_token.reshape(1, 1, C).to(pos.dtype) + pos)  # [1, N, C]
    patches = torch.where(mask.to(tokens.device)[..., None], masked.to(tokens.dtype),
                          tokens[:, e:])
    return torch.cat([tokens[:, :e], patches], dim=1)


def embed_with_edits(backbone: nn.Module,
                     x: torch.Tensor,
                     replace: Optional[torch.Tensor] = None,
                     donor_index: Optional[torch.Tensor] = None,
                     mim_mask: Optional[torch.Tensor] = None,
                     mask_token: Optional[torch.Tensor] = None
                     ) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """``backbone.embed(x)`` (:class:`CoTAPViT`), then foreign-token substitution, then masking.

    The donors are the clean (unmasked) embedded tokens: substitution runs before masking, so a
    replaced position never holds a mask token.

    Args:
        backbone (nn.Module): :class:`CoTAPViT` (anything with ``embed`` and the attributes of
            :func:`apply_mask_token`).
        x (Tensor): [R, 3, H, W].
        replace (BoolTensor, optional): [R, N] for :func:`substitute_tokens`.
        donor_index (LongTensor, optional): [R], required with ``replace``.
        mim_mask (BoolTensor, optional): [R, N] for :func:`apply_mask_token`.
        mask_token (Tensor, optional): [C], required with ``mim_mask``.

    Returns:
        tuple: tokens [R, e + N, C] and the patch grid (h, w).
    """
    tokens, hw = backbone.embed(x)
    if replace is not None:
        if donor_index is None:
            raise ValueError('embed_with_edits: replace needs donor_index')
        tokens = substitute_tokens(tokens, replace, donor_index, backbone.num_extra_tokens)
    if mim_mask is not None:
        if mask_token is None:
            raise ValueError('embed_with_edits: mim_mask needs mask_token')
        tokens = apply_mask_token(backbone, tokens, mim_mask, mask_token, hw)
    return tokens, hw


def forward_pre_last_with_edits(backbone: nn.Module, x: torch.Tensor, **edits
                                ) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """:meth:`CoTAPViT.forward_pre_last` with :func:`embed_with_edits`: the tokens entering the
    last block (for algorithms that re-run the last block, e.g. CoTAP's object-aware filter).

    Returns:
        tuple: tokens [R, e + N, C] and the patch grid (h, w).
    """
    tokens, hw = embed_with_edits(backbone, x, **edits)
    for layer in backbone.layers[:-1]:
        tokens = layer(tokens)
    return tokens, hw


def encode_with_edits(backbone: nn.Module, x: torch.Tensor, **edits
                      ) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """:func:`embed_with_edits`, all transformer layers, then the final norm (``ln1``) when the
    backbone has ``final_norm`` (mmpretrain ``VisionTransformer.forward`` with ``out_type='raw'``).

    Returns:
        tuple: tokens [R, e + N, C] and the patch grid (h, w).
    """
    tokens, hw = embed_with_edits(backbone, x, **edits)
    for layer in backbone.layers:
        tokens = layer(tokens)
    if getattr(backbone, 'final_norm', False):
        tokens = backbone.ln1(tokens)
    return tokens, hw


# ----------------------------------------------------------------------------- de-coupling
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


# ----------------------------------------------------------------------------- de-positioning
def box_pool_tokens(patch_tokens: torch.Tensor, hw: Sequence[int],
                    boxes: torch.Tensor) -> torch.Tensor:
    """Area-weighted mean of the patch tokens inside a box (exact for patch-aligned boxes).

    Token ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)`` in patch units; its weight is the area of
    its overlap with the box divided by the box area.

    Args:
        patch_tokens (Tensor): [R, N, C], N = h * w (row-major).
        hw (Sequence[int]): (h, w).
        boxes (Tensor): [R, 4] ``(x1, y1, x2, y2)`` in patch units, inside the grid, positive
            area.

    Returns:
        Tensor: [R, C].
    """
    h, w = int(hw[0]), int(hw[1])
    if patch_tokens.dim() != 3 or patch_tokens.shape[1] != h * w:
        raise ValueError(f'patch_tokens must be [R, h*w={h * w}, C], got '
                         f'{tuple(patch_tokens.shape)}')
    R = patch_tokens.shape[0]
    if tuple(boxes.shape) != (R, 4):
        raise ValueError(f'boxes must be [R, 4] = [{R}, 4], got {tuple(boxes.shape)}')
    b = boxes.to(device=patch_tokens.device, dtype=torch.float32)
    if bool(((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any()):
        raise ValueError(f'boxes must have x2 > x1 and y2 > y1, got {boxes.tolist()}')
    if bool(((b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > w) | (b[:, 3] > h)).any()):
        raise ValueError(f'boxes must lie in the {h} x {w} grid, got {boxes.tolist()}')
    ys = torch.arange(h, device=b.device, dtype=b.dtype)
    xs = torch.arange(w, device=b.device, dtype=b.dtype)
    oy = (torch.minimum(ys[None] + 1, b[:, 3:4]) - torch.maximum(ys[None], b[:, 1:2])).clamp(min=0)
    ox = (torch.minimum(xs[None] + 1, b[:, 2:3]) - torch.maximum(xs[None], b[:, 0:1])).clamp(min=0)
    wgt = (oy[:, :, None] * ox[:, None, :]).reshape(R, h * w)
    wgt = wgt / wgt.sum(dim=1, keepdim=True)
    return torch.einsum('rn,rnc->rc', wgt.to(patch_tokens.dtype), patch_tokens)


def roi_align_pool(featmap: torch.Tensor, boxes: torch.Tensor, spatial_scale: float,
                   output_size: int = 7, sampling_ratio: int = 0) -> torch.Tensor:
    """Region feature of a CNN map: ``mmcv.ops.RoIAlign(aligned=True)`` then the mean of the bins.

    The v1 figure's "RoI Align -> Head": one vector per box on the C4 map.

    Args:
        featmap (Tensor): [R, C, H', W'].
        boxes (Tensor): [R, 4] ``(x1, y1, x2, y2)`` in input pixels (box ``r`` on map ``r``).
        spatial_scale (float): map / input size, e.g. 1/16 for C4.
        output_size (int): RoIAlign bins per side. Defaults to 7.
        sampling_ratio (int): Defaults to 0 (adaptive).

    Returns:
        Tensor: [R, C].
    """
    from mmcv.ops import RoIAlign
    if featmap.dim() != 4 or tuple(boxes.shape) != (featmap.shape[0], 4):
        raise ValueError(f'featmap must be [R, C, H, W] and boxes [R, 4], got '
                         f'{tuple(featmap.shape)} and {tuple(boxes.shape)}')
    rois = torch.cat([torch.arange(featmap.shape[0], device=featmap.device,
                                   dtype=featmap.dtype)[:, None],
                      boxes.to(featmap)], dim=1)
    op = RoIAlign((output_size, output_size), spatial_scale, sampling_ratio, aligned=True)
    return op(featmap, rois).mean(dim=(2, 3))


def paste_regions(images: torch.Tensor, src_boxes: torch.Tensor, dst_boxes: torch.Tensor,
                  source_index: torch.Tensor, donor_index: torch.Tensor) -> torch.Tensor:
    """Paste a region of each source image onto a donor image ("foreign background").

    ``out[k] = images[donor_index[k]]`` with ``images[source_index[k]][src box]`` bilinearly
    resized (antialiased, half-pixel centres) into the destination box.

    Args:
        images (Tensor): [B, C, H, W].
        src_boxes (LongTensor): [K, 4] integer pixel boxes ``(x1, y1, x2, y2)`` (exclusive ends).
        dst_boxes (LongTensor): [K, 4] integer pixel boxes.
        source_index (LongTensor): [K] rows of ``images``.
        donor_index (LongTensor): [K] rows of ``images`` (the backgrounds).

    Returns:
        Tensor: [K, C, H, W] (no gradient to ``images`` is needed; it is kept anyway).
    """
    K = int(source_index.numel())
    B, C, H, W = images.shape
    for name, bx in (('src_boxes', src_boxes), ('dst_boxes', dst_boxes)):
        if tuple(bx.shape) != (K, 4):
            raise ValueError(f'{name} must be [K, 4] = [{K}, 4], got {tuple(bx.shape)}')
        b = bx.long()
        if K and bool(((b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > W) | (b[:, 3] > H)
                       | (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any()):
            raise ValueError(f'{name} must be non-empty boxes inside the {H} x {W} image, got '
                             f'{bx.tolist()}')
    out = images[donor_index.long()].clone()
    for k in range(K):
        sx1, sy1, sx2, sy2 = (int(v) for v in src_boxes[k])
        dx1, dy1, dx2, dy2 = (int(v) for v in dst_boxes[k])
        crop = images[int(source_index[k]), :, sy1:sy2, sx1:sx2][None]
        if (dy2 - dy1, dx2 - dx1) != (sy2 - sy1, sx2 - sx1):
            crop = F.interpolate(crop, size=(dy2 - dy1, dx2 - dx1), mode='bilinear',
                                 align_corners=False, antialias=True)
        out[k, :, dy1:dy2, dx1:dx2] = crop[0]
    return out


def sample_depositioning_boxes(grid_hw: Sequence[int], num: int, rng,
                               box_area: Tuple[float, float] = (0.12, 0.30),
                               box_aspect: Tuple[float, float] = (0.5, 2.0),
                               scale: Tuple[float, float] = (0.5, 1.5),
                               src_boxes: Optional[np.ndarray] = None
                               ) -> Tuple[np.ndarray, np.ndarray]:
    """Random source boxes and their new positions / scales on the patch grid.

    Source: the given ``src_boxes`` or a random box (:func:`sample_grid_box`, placed where it
    fits; the RCC box statistics). Destination: both sides scaled by ``s ~ U(scale)`` (rounded,
    clipped to [1, grid]), placed uniformly where it fits.

    Returns:
        tuple[np.ndarray, np.ndarray]: int64 ``[num, 4]`` source and destination boxes
        ``(x1, y1, x2, y2)`` in patch units.
    """
    h, w = int(grid_hw[0]), int(grid_hw[1])
    if not (len(scale) == 2 and 0 < float(scale[0]) <= float(scale[1])):
        raise ValueError(f'scale must be a (min, max) pair with 0 < min <= max, got {scale!r}')
    src, dst = [], []
    for k in range(num):
        if src_boxes is not None:
            box = tuple(int(v) for v in src_boxes[k])
        else:
            box = sample_grid_box((h, w), rng, box_area, box_aspect)
        x1, y1, x2, y2 = box
        s = float(rng.uniform(float(scale[0]), float(scale[1])))
        dh = min(max(int(round((y2 - y1) * s)), 1), h)
        dw = min(max(int(round((x2 - x1) * s)), 1), w)
        dy, dx = _randint(rng, h - dh), _randint(rng, w - dw)
        src.append(box)
        dst.append((dx, dy, dx + dw, dy + dh))
    return (np.asarray(src, dtype=np.int64).reshape(-1, 4),
            np.asarray(dst, dtype=np.int64).reshape(-1, 4))


def _randint(rng, high: int) -> int:
    """Uniform integer in [0, high] from a Generator, RandomState or the np.random module."""
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, high + 1))
    return int(rng.randint(0, high + 1))


def boxes_to_grid(boxes: torch.Tensor, patch_size: int, grid_hw: Sequence[int]) -> torch.Tensor:
    """Pixel boxes -> the patch-aligned boxes covering them (floor / ceil), clipped to the grid.

    Args:
        boxes (Tensor): [K, 4] ``(x1, y1, x2, y2)`` in view pixels.
        patch_size (int): pixels per patch.
        grid_hw (Sequence[int]): (h, w).

    Returns:
        LongTensor: [K, 4] with at least one patch per box.
    """
    h, w = int(grid_hw[0]), int(grid_hw[1])
    b = boxes.float() / patch_size
    x1 = b[:, 0].floor().clamp(0, w - 1)
    y1 = b[:, 1].floor().clamp(0, h - 1)
    x2 = torch.maximum(b[:, 2].ceil().clamp(max=w), x1 + 1)
    y2 = torch.maximum(b[:, 3].ceil().clamp(max=h), y1 + 1)
    return torch.stack([x1, y1, x2, y2], dim=1).long()


class DepositioningBatch(NamedTuple):
    """Composite images of one view and their boxes (patch units).

    images: [K, 3, H, W] pasted composites; source_index / donor_index: [K] batch rows;
    src_boxes / dst_boxes: LongTensor [K, 4] ``(x1, y1, x2, y2)`` on the patch grid.
    """
    images: torch.Tensor
    source_index: torch.Tensor
    donor_index: torch.Tensor
    src_boxes: torch.Tensor
    dst_boxes: torch.Tensor


class DepositioningBranch:
    """v1's de-positioning module as a reusable component (no parameters).

    Paper: `De-coupling and De-positioning Dense Self-supervised Learning
    <https://arxiv.org/abs/2303.16947>`_ (v1 figure: foreground regions pasted onto another
    image's background at new positions; their features tied to the teacher's features of the
    clean views). For ``K = floor(prob * B)`` random images of a view, a region is pasted (resized
    by ``s ~ U(scale)``, new random position) onto another image of the batch
    (:func:`foreign_index`); the student's region feature of the composite (box-pooled at the
    destination) is matched to the teacher's region feature of the clean view (box-pooled at the
    source). The paper gives no recipe: the box statistics (RCC's), ``scale``, ``prob`` and
    ``loss_weight`` (the de-coupling weight) are our choices, all config options.

    Boxes: with ``box_key`` the regions are object boxes from the data samples
    (``data_sample.<box_key>``: [G, M, 4] pixel boxes in each view, rows with x2 <= x1 ignored;
    one is picked at random); otherwise (unlabelled data, the default) a random box, the
    plausible choice when no proposals are available (v1 used Selective Search proposals).

    Args:
        prob (float): fraction of the batch per view. Defaults to 0.25.
        loss_weight (float): Defaults to 0.3.
        box_area (tuple[float, float]): random box area fraction. Defaults to (0.12, 0.30).
        box_aspect (tuple[float, float]): random box aspect (w/h). Defaults to (0.5, 2.0).
        scale (tuple[float, float]): side scale of the pasted region. Defaults to (0.5, 1.5).
        box_key (str, optional): data-sample field with object boxes. Defaults to None.
        seed (int, optional): private ``np.random.RandomState``. Defaults to None (``np.random``).
    """

    def __init__(self,
                 prob: float = 0.25,
                 loss_weight: float = 0.3,
                 box_area: Tuple[float, float] = (0.12, 0.30),
                 box_aspect: Tuple[float, float] = (0.5, 2.0),
                 scale: Tuple[float, float] = (0.5, 1.5),
                 box_key: Optional[str] = None,
                 seed: Optional[int] = None) -> None:
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f'depositioning prob must be in [0, 1], got {prob!r}')
        self.prob = float(prob)
        self.loss_weight = float(loss_weight)
        self.box_area = tuple(box_area)
        self.box_aspect = tuple(box_aspect)
        self.scale = tuple(scale)
        self.box_key = box_key
        self._rng = np.random.RandomState(seed) if seed is not None else None
        # validate the ranges once
        sample_depositioning_boxes((4, 4), 1, np.random.RandomState(0), self.box_area,
                                   self.box_aspect, self.scale)

    @property
    def rng(self):
        return self._rng if self._rng is not None else np.random

    def num_samples(self, batch_size: int) -> int:
        return int(math.floor(self.prob * batch_size)) if batch_size >= 2 else 0

    def _data_boxes(self, data_samples: Optional[Sequence], view: int, rows: np.ndarray,
                    patch_size: int, hw: Sequence[int]) -> Optional[np.ndarray]:
        if self.box_key is None or not data_samples:
            return None
        out = []
        for r in rows:
            ds = data_samples[int(r)]
            if self.box_key not in ds:
                return None
            b = torch.as_tensor(np.asarray(ds.get(self.box_key)) if not isinstance(
                ds.get(self.box_key), torch.Tensor) else ds.get(self.box_key)).float()
            if b.dim() != 3 or b.shape[-1] != 4 or b.shape[0] <= view:
                raise ValueError(f'data_sample.{self.box_key} must be [G, M, 4] pixel boxes, got '
                                 f'{tuple(b.shape)}')
            b = b[view]
            b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
            if b.shape[0] == 0:
                out.append(np.asarray(sample_grid_box(hw, self.rng, self.box_area,
                                                      self.box_aspect)))
                continue
            pick = b[_randint(self.rng, b.shape[0] - 1)][None]
            out.append(boxes_to_grid(pick, patch_size, hw)[0].cpu().numpy())
        return np.stack(out).astype(np.int64)

    def build(self, view: torch.Tensor, hw: Sequence[int], view_index: int = 0,
              data_samples: Optional[Sequence] = None) -> Optional[DepositioningBatch]:
        """Composites for one view batch [B, 3, H, W] with patch grid ``hw``; None if K = 0."""
        B, _, H, W = view.shape
        h, w = int(hw[0]), int(hw[1])
        if H % h or W % w or H // h != W // w:
            raise ValueError(f'image size {(H, W)} must be a multiple of the patch grid {(h, w)}')
        p = H // h
        K = self.num_samples(B)
        if K == 0:
            return None
        rows = np.sort(self.rng.permutation(B)[:K])
        src_np, dst_np = sample_depositioning_boxes(
            (h, w), K, self.rng, self.box_area, self.box_aspect, self.scale,
            self._data_boxes(data_samples, view_index, rows, p, (h, w)))
        device = view.device
        source = torch.as_tensor(rows, dtype=torch.long, device=device)
        donor = foreign_index(source, B)
        src = torch.as_tensor(src_np, device=device)
        dst = torch.as_tensor(dst_np, device=device)
        images = paste_regions(view, src * p, dst * p, source, donor)
        return DepositioningBatch(images, source, donor, src, dst)

    def loss(self, loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
             student_region: torch.Tensor, teacher_region: torch.Tensor) -> torch.Tensor:
        """``loss_weight * loss_fn(student [G, K, 1, D], teacher [G, K, 1, D], ones [G, K, 1])``
        for region outputs ``[G, K, D]`` (one "token" per region)."""
        s, t = student_region[:, :, None], teacher_region[:, :, None]
        ones = torch.ones(s.shape[:3], dtype=torch.bool, device=s.device)
        return self.loss_weight * loss_fn(s, t, ones)

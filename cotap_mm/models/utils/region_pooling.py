"""Pooling token maps over regions: box-weighted token means (de-positioning) and RoIAlign pooling
of the region two crops have in common (Leopart / CoTAP patch clustering).

CoTAP (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_) takes Leopart's
patch clustering term (`arXiv 2204.13101 <https://arxiv.org/abs/2204.13101>`_): for two crops of
the same image, each crop's map (teacher codes, student scores, foreground mask) is RoI-aligned
(6 x 6, ``aligned=True``) over the *overlap* of the two crops, so that cell ``(i, j)`` of both
pooled maps covers the same region of the original image.

Geometry comes from :class:`~cotap_mm.datasets.transforms.geometric_views.GeometricMultiView`:
``crop_boxes`` ``[V, 4]`` in original-image pixels, ``crop_flips`` ``[V]``; the overlap in a
crop's own pixels is :func:`overlap_in_crop_coords`. A ``C x h x w`` map of a crop of ``H x W``
pixels is taken to tile the crop regularly (cell ``j`` covers crop pixels
``[j W / w, (j + 1) W / w)``, true for ViT patch grids), so crop pixels are scaled by
``(w / W, h / H)`` into map coordinates. A flipped crop's pooled output is flipped back
horizontally, so the pooled grids of both crops are in original-image orientation.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from mmcv.ops import roi_align

from cotap_mm.structures.boxes import box_area, box_intersection, overlap_in_crop_coords

__all__ = ['box_pool_tokens', 'overlap_rois', 'roi_align_maps', 'pool_crop_overlaps']


def _hw(size: Sequence[int], name: str) -> Tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f'{name} must be an int or an (h, w) pair of positive ints, got {size!r}')
    return size


def overlap_rois(box_a: torch.Tensor,
                 box_b: torch.Tensor,
                 size_a: Sequence[int],
                 flip_a: Optional[torch.Tensor] = None,
                 min_area: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The overlap of crops ``a`` and ``b`` in crop-``a`` pixels, and whether it is non-empty.

    Args:
        box_a (Tensor): [M, 4] original-image boxes ``(x1, y1, x2, y2)`` of crops ``a``.
        box_b (Tensor): [M, 4] boxes of crops ``b``.
        size_a (int | tuple[int, int]): output size ``(H, W)`` of crops ``a`` in pixels.
        flip_a (Tensor, optional): [M] bool, crop ``a`` flipped horizontally after resizing.
        min_area (float): overlaps of at most this area (original-image pixels^2) are invalid.
            Defaults to 0 (only empty overlaps are invalid).

    Returns:
        tuple[Tensor, Tensor]: rois [M, 4] float32 in the pixels of crop ``a`` as it was fed to
        the network (i.e. after its flip, see :func:`overlap_in_crop_coords`), valid [M] bool.
    """
    box_a = torch.as_tensor(box_a, dtype=torch.float32)
    box_b = torch.as_tensor(box_b, dtype=torch.float32, device=box_a.device)
    if box_a.dim() != 2 or box_a.shape[-1] != 4 or box_b.shape != box_a.shape:
        raise ValueError(f'box_a and box_b must both be [M, 4], got {tuple(box_a.shape)} and '
                         f'{tuple(box_b.shape)}')
    h, w = _hw(size_a, 'size_a')
    flip = False if flip_a is None else torch.as_tensor(flip_a, dtype=torch.bool,
                                                        device=box_a.device)
    rois = overlap_in_crop_coords(box_a, box_b, (h, w), flip)
    valid = box_area(box_intersection(box_a, box_b)) > float(min_area)
    return rois.float(), valid


def roi_align_maps(maps: torch.Tensor,
                   rois: torch.Tensor,
                   batch_idx: torch.Tensor,
                   crop_size: Sequence[int],
                   output_size: int = 6,
                   flips: Optional[torch.Tensor] = None,
                   sampling_ratio: int = 0) -> torch.Tensor:
    """``mmcv.ops.roi_align`` (average, ``aligned=True``) of crop-pixel rois on crop maps.

    Args:
        maps (Tensor): [N, C, h, w] maps of crops of ``crop_size`` pixels.
        rois (Tensor): [M, 4] ``(x1, y1, x2, y2)`` in crop pixels.
        batch_idx (Tensor): [M] index into ``maps`` of each roi.
        crop_size (int | tuple[int, int]): ``(H, W)`` of the crops in pixels.
        output_size (int): S, the pooled grid is S x S. Defaults to 6.
        flips (Tensor, optional): [M] bool; pooled outputs of flipped crops are flipped back
            horizontally (original-image orientation). Defaults to None.
        sampling_ratio (int): samples per bin and axis; 0 = adaptive ``ceil(bin size)``
            (as torchvision's -1). Defaults to 0.

    Returns:
        Tensor: [M, C, S, S] float32 (differentiable w.r.t. ``maps``).
    """
    if maps.dim() != 4:
        raise ValueError(f'maps must be [N, C, h, w], got {tuple(maps.shape)}')
    if rois.dim() != 2 or rois.shape[-1] != 4 or batch_idx.shape != rois.shape[:1]:
        raise ValueError(f'rois must be [M, 4] and batch_idx [M], got {tuple(rois.shape)} and '
                         f'{tuple(batch_idx.shape)}')
    if isinstance(output_size, bool) or not isinstance(output_size, int) or output_size < 1:
        raise ValueError(f'output_size must be a positive int, got {output_size!r}')
    H, W = _hw(crop_size, 'crop_size')
    h, w = maps.shape[-2:]
    if rois.shape[0] == 0:
        return maps.new_zeros((0, maps.shape[1], output_size, output_size), dtype=torch.float32)
    scale = rois.new_tensor([w / W, h / H, w / W, h / H], dtype=torch.float32)
    rois5 = torch.cat([batch_idx.to(rois.device, torch.float32)[:, None],
                       rois.float() * scale], dim=1).to(maps.device)
    with torch.autocast(device_type=maps.device.type, enabled=False):
        out = roi_align(maps.float().contiguous(), rois5, (output_size, output_size), 1.0,
                        sampling_ratio, 'avg', True)
    if flips is not None:
        f = torch.as_tensor(flips, dtype=torch.bool, device=out.device)
        out = torch.where(f[:, None, None, None], out.flip(-1), out)
    return out


def pool_crop_overlaps(target_maps: torch.Tensor,
                       student_maps: Sequence[torch.Tensor],
                       crop_boxes: torch.Tensor,
                       crop_sizes: Sequence[Sequence[int]],
                       crop_flips: Optional[torch.Tensor] = None,
                       output_size: int = 6,
                       target_view_ids: Optional[Sequence[int]] = None,
                       min_area: float = 0.0
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, List[Tuple[int, int]]]:
    """Pool every (target crop, other student crop) pair over the pair's overlap.

    For each target crop ``t`` (a teacher view) and each student crop ``c != t``, per image:
    the target map of ``t`` is RoI-aligned over ``box_t ∩ box_c`` expressed in ``t``'s pixels and
    the student map of ``c`` over the same region in ``c``'s pixels.

    Args:
        target_maps (Tensor): [T, B, C, h, w] maps of the target crops.
        student_maps (Sequence[Tensor]): V maps [B, C', h_c, w_c], one per crop index.
        crop_boxes (Tensor): [B, V, 4] original-image boxes of all crops.
        crop_sizes (Sequence[tuple[int, int]]): V crop sizes ``(H, W)`` in pixels.
        crop_flips (Tensor, optional): [B, V] bool horizontal flips. Defaults to None.
        output_size (int): S. Defaults to 6.
        target_view_ids (Sequence[int], optional): crop index of each target map; defaults to
            ``range(T)`` (the global crops).
        min_area (float): see :func:`overlap_rois`. Defaults to 0.

    Returns:
        tuple: ``target`` [P, B, C, S, S], ``student`` [P, B, C', S, S], ``valid`` [P, B] bool
        (False where the two crops of an image do not overlap), and the P ``(t, c)`` crop pairs.
    """
    if target_maps.dim() != 5:
        raise ValueError(f'target_maps must be [T, B, C, h, w], got {tuple(target_maps.shape)}')
    T, B = target_maps.shape[:2]
    V = len(student_maps)
    if crop_boxes.shape != (B, V, 4):
        raise ValueError(f'crop_boxes must be [B, V, 4] = [{B}, {V}, 4], got '
                         f'{tuple(crop_boxes.shape)}')
    if len(crop_sizes) != V:
        raise ValueError(f'crop_sizes must have V={V} entries, got {len(crop_sizes)}')
    if crop_flips is not None and crop_flips.shape != (B, V):
        raise ValueError(f'crop_flips must be [B, V] = [{B}, {V}], got {tuple(crop_flips.shape)}')
    t_ids = list(range(T)) if target_view_ids is None else [int(i) for i in target_view_ids]
    if len(t_ids) != T or any(not 0 <= t < V for t in t_ids):
        raise ValueError(f'target_view_ids must be {T} crop indices in [0, {V}), got {t_ids}')
    for c, m in enumerate(student_maps):
        if m.dim() != 4 or m.shape[0] != B:
            raise ValueError(f'student_maps[{c}] must be [B={B}, C, h, w], got {tuple(m.shape)}')
    boxes = crop_boxes.float()
    ar = torch.arange(B, device=boxes.device)
    t_out, s_out, valid, pairs = [], [], [], []
    for ti, t in enumerate(t_ids):
        for c in range(V):
            if c == t:
                continue
            f_t = None if crop_flips is None else crop_flips[:, t]
            f_c = None if crop_flips is None else crop_flips[:, c]
            roi_t, ok = overlap_rois(boxes[:, t], boxes[:, c], crop_sizes[t], f_t, min_area)
            roi_c, _ = overlap_rois(boxes[:, c], boxes[:, t], crop_sizes[c], f_c, min_area)
            t_out.append(roi_align_maps(target_maps[ti], roi_t, ar, crop_sizes[t], output_size,
                                        f_t))
            s_out.append(roi_align_maps(student_maps[c], roi_c, ar, crop_sizes[c], output_size,
                                        f_c))
            valid.append(ok)
            pairs.append((t, c))
    if not pairs:
        raise ValueError(f'no (target, student) crop pair: target crops {t_ids}, {V} crops')
    return torch.stack(t_out), torch.stack(s_out), torch.stack(valid).to(t_out[0].device), pairs


def box_pool_tokens(patch_tokens: torch.Tensor, hw: Sequence[int],
                    boxes: torch.Tensor) -> torch.Tensor:
    """Area-weighted mean of the patch tokens inside a box (exact for patch-aligned boxes).

    Token ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)`` in patch units; its weight is the area of
    its overlap with the box divided by the box area.

    Args:
        patch_tokens (Tensor): [R, N, C], N = h * w (row-major).
        hw (Sequence[int]): (h, w).
        boxes (Tensor): [R, 4] ``(x1, y1, x2, y2)`` in patch units, inside the grid, positive
            area (not checked: the samplers guarantee it, and a check would sync the host).

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
    b = boxes.to(device=patch_tokens.device, dtype=torch.float32)  # values unchecked: no sync
    ys = torch.arange(h, device=b.device, dtype=b.dtype)
    xs = torch.arange(w, device=b.device, dtype=b.dtype)
    oy = (torch.minimum(ys[None] + 1, b[:, 3:4]) - torch.maximum(ys[None], b[:, 1:2])).clamp(min=0)
    ox = (torch.minimum(xs[None] + 1, b[:, 2:3]) - torch.maximum(xs[None], b[:, 0:1])).clamp(min=0)
    wgt = (oy[:, :, None] * ox[:, None, :]).reshape(R, h * w)
    wgt = wgt / wgt.sum(dim=1, keepdim=True)
    return torch.einsum('rn,rnc->rc', wgt.to(patch_tokens.dtype), patch_tokens)

"""De-positioning: a region of an image pasted onto another image at a new position and scale.

Paper: `De-coupling and De-positioning Dense Self-supervised Learning
<https://arxiv.org/abs/2303.16947>`_ (v1 figure). A switchable add-on of CoTAP and DDSSLiBOT: the
student's box-pooled feature of the pasted region (:func:`box_pool_tokens`) is matched to the
teacher's box-pooled feature of the same region in the clean view.
"""
import math
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from cotap_mm.structures.boxes import boxes_to_grid, sample_grid_box
from cotap_mm.structures.sampling import rand_int
from ..backbones.token_edits import foreign_index

__all__ = ['paste_regions', 'sample_depositioning_boxes', 'DepositioningBatch',
           'DepositioningBranch']


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
        dy, dx = rand_int(rng, 0, h - dh), rand_int(rng, 0, w - dw)
        src.append(box)
        dst.append((dx, dy, dx + dw, dy + dh))
    return (np.asarray(src, dtype=np.int64).reshape(-1, 4),
            np.asarray(dst, dtype=np.int64).reshape(-1, 4))


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
            pick = b[rand_int(self.rng, 0, b.shape[0] - 1)][None]
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

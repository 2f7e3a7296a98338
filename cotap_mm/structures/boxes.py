"""Box geometry shared by the data transforms (crop boxes, cutout boxes) and the models.

Boxes are ``(x1, y1, x2, y2)``; a pixel or patch ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``.
The functions take numpy arrays, tensors or sequences and return the type they were given
(torch when either operand is a tensor).
"""
import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .sampling import RNG, as_hw, check_range, rand_int, rand_uniform

__all__ = ['BoxLike', 'box_area', 'box_intersection', 'overlap_in_crop_coords', 'sample_grid_box',
           'boxes_to_grid']

BoxLike = Union[np.ndarray, torch.Tensor, Sequence[float]]


def _as_boxes(box: BoxLike, name: str) -> Union[np.ndarray, torch.Tensor]:
    if not isinstance(box, torch.Tensor):
        box = np.asarray(box, dtype=np.float64)
    if box.shape[-1:] != (4, ):
        raise ValueError(f'{name} must have a last dimension of size 4 (x1, y1, x2, y2), '
                         f'got shape {tuple(box.shape)}')
    return box


def _maximum(a, b):
    return torch.maximum(a, b) if isinstance(a, torch.Tensor) else np.maximum(a, b)


def _minimum(a, b):
    return torch.minimum(a, b) if isinstance(a, torch.Tensor) else np.minimum(a, b)


def _stack(parts):
    return torch.stack(parts, -1) if isinstance(parts[0], torch.Tensor) else np.stack(parts, -1)


def _match(a, b):
    """Bring a numpy/sequence operand to the other operand's type (torch wins)."""
    if isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        b = torch.as_tensor(b, dtype=a.dtype, device=a.device)
    elif isinstance(b, torch.Tensor) and not isinstance(a, torch.Tensor):
        a = torch.as_tensor(a, dtype=b.dtype, device=b.device)
    return a, b


def box_area(boxes: BoxLike) -> Union[np.ndarray, torch.Tensor]:
    """Area of ``[..., 4]`` boxes ``(x1, y1, x2, y2)`` (negative extents count as 0)."""
    b = _as_boxes(boxes, 'boxes')
    zero = b[..., 0] * 0
    return _maximum(b[..., 2] - b[..., 0], zero) * _maximum(b[..., 3] - b[..., 1], zero)


def box_intersection(a: BoxLike, b: BoxLike) -> Union[np.ndarray, torch.Tensor]:
    """Intersection of boxes ``a`` and ``b`` (broadcast over leading dims).

    Args:
        a: ``[..., 4]`` boxes ``(x1, y1, x2, y2)``; numpy, torch or a sequence.
        b: ``[..., 4]`` boxes, broadcastable with ``a``.

    Returns:
        ``[..., 4]`` boxes of the same array type (torch if either input is torch). Empty
        intersections come back as zero-area boxes (``x2 = max(x2, x1)``, same for y), so
        :func:`box_area` of the result is the intersection area.
    """
    a, b = _match(_as_boxes(a, 'a'), _as_boxes(b, 'b'))
    x1 = _maximum(a[..., 0], b[..., 0])
    y1 = _maximum(a[..., 1], b[..., 1])
    x2 = _maximum(_minimum(a[..., 2], b[..., 2]), x1)
    y2 = _maximum(_minimum(a[..., 3], b[..., 3]), y1)
    return _stack([x1, y1, x2, y2])


def overlap_in_crop_coords(box_a: BoxLike,
                           box_b: BoxLike,
                           out_size: Union[int, Sequence[int]],
                           flip_a: Union[bool, np.ndarray, torch.Tensor] = False
                           ) -> Union[np.ndarray, torch.Tensor]:
    """The overlap of crop ``a`` and crop ``b``, in the output pixel coordinates of crop ``a``.

    Crop ``a`` covers ``box_a`` of the original image and was resized to ``out_size`` (then
    horizontally flipped if ``flip_a``). The returned box is where ``box_a ∩ box_b`` lies in that
    crop image, in the same continuous convention (pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``),
    i.e. ready for ``RoIAlign(aligned=True)`` on a feature map after dividing by the patch size.

    Args:
        box_a: ``[..., 4]`` original-image box of crop ``a`` (numpy, torch or a sequence).
        box_b: ``[..., 4]`` original-image box of crop ``b``, broadcastable with ``box_a``.
        out_size (int | tuple[int, int]): Output size of crop ``a`` as ``s`` or ``(h, w)``.
        flip_a (bool | array): Whether crop ``a`` was flipped horizontally after resizing;
            a bool or a ``[...]`` array broadcastable with the boxes' leading dims.

    Returns:
        ``[..., 4]`` boxes ``(x1, y1, x2, y2)`` in crop-``a`` pixels; zero-area when the crops do
        not overlap (check with :func:`box_area`).
    """
    out_h, out_w = as_hw(out_size, 'out_size')
    box_a, box_b = _match(_as_boxes(box_a, 'box_a'), _as_boxes(box_b, 'box_b'))
    inter = box_intersection(box_a, box_b)
    inter, box_a = _match(inter, box_a)
    sx = out_w / (box_a[..., 2] - box_a[..., 0])
    sy = out_h / (box_a[..., 3] - box_a[..., 1])
    x1 = (inter[..., 0] - box_a[..., 0]) * sx
    x2 = (inter[..., 2] - box_a[..., 0]) * sx
    y1 = (inter[..., 1] - box_a[..., 1]) * sy
    y2 = (inter[..., 3] - box_a[..., 1]) * sy
    if isinstance(flip_a, torch.Tensor) or isinstance(flip_a, np.ndarray) or flip_a:
        if isinstance(x1, torch.Tensor):
            f = torch.as_tensor(flip_a, dtype=torch.bool, device=x1.device)
            fx1 = torch.where(f, out_w - x2, x1)
            fx2 = torch.where(f, out_w - x1, x2)
        else:
            f = np.asarray(flip_a, dtype=bool)
            fx1 = np.where(f, out_w - x2, x1)
            fx2 = np.where(f, out_w - x1, x2)
        x1, x2 = fx1, fx2
    return _stack([x1, y1, x2, y2])


def sample_grid_box(grid_hw: Union[int, Sequence[int]],
                    rng: RNG,
                    area: Tuple[float, float] = (0.12, 0.30),
                    aspect: Tuple[float, float] = (0.5, 2.0),
                    center_y: Optional[Tuple[float, float]] = None,
                    center_x: Optional[Tuple[float, float]] = None) -> Tuple[int, int, int, int]:
    """One box on the patch grid: area fraction ~ ``U(area)``, aspect (w/h) log-uniform in
    ``aspect``.

    With a centre range (continuous patch coordinates) the centre is uniform in it and the box is
    *clipped* to the grid (RCC). Without one, the box is placed uniformly where it fits entirely
    (random object boxes of the de-positioning branch).

    Args:
        grid_hw (int | tuple[int, int]): patch grid (h, w).
        rng: numpy random generator / RandomState / module.
        area (tuple[float, float]): area fraction range of the grid. Defaults to (0.12, 0.30).
        aspect (tuple[float, float]): aspect-ratio (w/h) range. Defaults to (0.5, 2.0).
        center_y (tuple[float, float], optional): range of the centre row.
        center_x (tuple[float, float], optional): range of the centre column.

    Returns:
        tuple[int, int, int, int]: ``(x1, y1, x2, y2)``, at least one patch, inside the grid.
    """
    h, w = as_hw(grid_hw, 'grid_hw')
    area = check_range(area, 'area', 0.0, 1.0)
    aspect = check_range(aspect, 'aspect', 0.0, math.inf)
    target = rand_uniform(rng, *area) * h * w
    ar = math.exp(rand_uniform(rng, math.log(aspect[0]), math.log(aspect[1])))
    bh = min(max(math.sqrt(target / ar), 1.0), float(h))
    bw = min(max(math.sqrt(target * ar), 1.0), float(w))
    if center_y is None or center_x is None:
        ih, iw = max(1, int(round(bh))), max(1, int(round(bw)))
        y1, x1 = rand_int(rng, 0, h - ih), rand_int(rng, 0, w - iw)
        return x1, y1, x1 + iw, y1 + ih
    cy, cx = rand_uniform(rng, *center_y), rand_uniform(rng, *center_x)
    y1 = min(max(int(round(cy - bh / 2)), 0), h - 1)
    x1 = min(max(int(round(cx - bw / 2)), 0), w - 1)
    y2 = min(max(int(round(cy + bh / 2)), y1 + 1), h)
    x2 = min(max(int(round(cx + bw / 2)), x1 + 1), w)
    return x1, y1, x2, y2


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

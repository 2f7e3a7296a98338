import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cotap_mm.datasets.transforms.geometric_views import crop_and_resize
from cotap_mm.models.utils.region_pooling import (overlap_rois, pool_crop_overlaps,
                                                        roi_align_maps)

H = W = 96


def _coord_image():
    """Pixel (i, j) holds its own centre (x, y) = (j + 0.5, i + 0.5): a linear image."""
    ys, xs = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing='ij')
    return np.stack([xs, ys], -1).astype(np.float32)


def _crop_map(img, box, size, stride, flip=False):
    crop = crop_and_resize(img, box, size, flip=flip, backend='cv2')  # [h, w, 2]
    t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None]
    return F.avg_pool2d(t, stride) if stride > 1 else t  # a "feature map" of stride `stride`


def _analytic(box, S=6):
    x1, y1, x2, y2 = box
    xs = x1 + (np.arange(S) + 0.5) * (x2 - x1) / S
    ys = y1 + (np.arange(S) + 0.5) * (y2 - y1) / S
    gx, gy = np.meshgrid(xs, ys)
    return torch.from_numpy(np.stack([gx, gy]).astype(np.float32))


@pytest.mark.parametrize('stride', [1, 4])
@pytest.mark.parametrize('flip_b', [False, True])
def test_pooled_overlaps_agree_with_each_other_and_the_direct_crop(stride, flip_b):
    img = _coord_image()
    box_a, size_a = (8., 16., 72., 80.), (32, 32)  # 64 x 64 px -> 32 x 32 (scale 1/2)
    box_b, size_b = (40., 30., 88., 90.), (40, 32)  # 48 x 60 px -> 40 x 32 (anisotropic)
    overlap = (40., 30., 72., 80.)
    map_a = _crop_map(img, box_a, size_a, stride)
    map_b = _crop_map(img, box_b, size_b, stride, flip=flip_b)
    boxes_a, boxes_b = torch.tensor([box_a]), torch.tensor([box_b])
    flips_b = torch.tensor([flip_b])
    roi_a, ok_a = overlap_rois(boxes_a, boxes_b, size_a)
    roi_b, ok_b = overlap_rois(boxes_b, boxes_a, size_b, flips_b)
    assert bool(ok_a) and bool(ok_b)
    idx = torch.zeros(1, dtype=torch.long)
    pa = roi_align_maps(map_a, roi_a, idx, size_a, 6)[0]
    pb = roi_align_maps(map_b, roi_b, idx, size_b, 6, flips=flips_b)[0]
    expected = _analytic(overlap)
    direct = torch.from_numpy(crop_and_resize(img, overlap, 6, backend='cv2')).permute(2, 0, 1)
    torch.testing.assert_close(direct, expected, rtol=0, atol=1e-3)
    # interior bins: exact (bilinear sampling of a linear map); border bins: within the half
    # map cell that RoIAlign clamps at a map border (in original-image pixels)
    inner = (slice(None), slice(1, -1), slice(1, -1))
    for pooled in (pa, pb):
        assert pooled.shape == (2, 6, 6)
        torch.testing.assert_close(pooled[inner], expected[inner], rtol=0, atol=1e-3)
        torch.testing.assert_close(pooled, expected, rtol=0, atol=0.5 * stride * 2.0 + 1e-3)
    torch.testing.assert_close(pa[inner], pb[inner], rtol=0, atol=2e-3)
    # a wrong geometry is caught: pooling b's map with a's roi does not match
    wrong = roi_align_maps(map_b, roi_a, idx, size_b, 6)[0]
    assert (wrong - expected).abs().max() > 3


def test_empty_overlap_is_invalid():
    rois, valid = overlap_rois(torch.tensor([[0., 0., 10., 10.], [0., 0., 10., 10.]]),
                               torch.tensor([[20., 20., 30., 30.], [5., 5., 30., 30.]]), 8)
    assert valid.tolist() == [False, True]
    torch.testing.assert_close(rois[1], torch.tensor([4., 4., 8., 8.]))
    assert float((rois[0, 2] - rois[0, 0]) * (rois[0, 3] - rois[0, 1])) == 0.0
    _, valid = overlap_rois(torch.tensor([[0., 0., 10., 10.]]), torch.tensor([[5., 5., 30., 30.]]),
                            8, min_area=25.0)
    assert valid.tolist() == [False]


def test_pool_crop_overlaps_pairs_and_gradients():
    g = torch.Generator().manual_seed(0)
    B, C = 2, 3
    boxes = torch.tensor([[[0., 0., 64., 64.], [16., 16., 80., 80.], [40., 8., 72., 40.]],
                          [[0., 0., 48., 48.], [50., 50., 96., 96.], [10., 10., 30., 30.]]])
    sizes = [(64, 64), (64, 64), (32, 32)]
    target = torch.randn(2, B, C + 1, 8, 8, generator=g)
    students = [torch.randn(B, C, 8, 8, generator=g, requires_grad=True) for _ in range(2)]
    students.append(torch.randn(B, C, 4, 4, generator=g, requires_grad=True))
    t, s, valid, pairs = pool_crop_overlaps(target, students, boxes, sizes, output_size=6)
    assert pairs == [(0, 1), (0, 2), (1, 0), (1, 2)]
    assert t.shape == (4, B, C + 1, 6, 6) and s.shape == (4, B, C, 6, 6)
    # image 1: crops 0 and 1 are disjoint; crops 1 and 2 are disjoint
    assert valid.tolist() == [[True, False], [True, True], [True, False], [True, False]]
    # pair (1, 2) of image 0 equals a direct RoIAlign of the same overlap
    roi, _ = overlap_rois(boxes[:1, 1], boxes[:1, 2], sizes[1])
    ref = roi_align_maps(target[1, :1], roi, torch.zeros(1, dtype=torch.long), sizes[1], 6)
    torch.testing.assert_close(t[3, :1], ref)
    s.sum().backward()
    assert all(m.grad.abs().sum() > 0 for m in students)


def test_bad_inputs():
    with pytest.raises(ValueError, match='crop_boxes'):
        pool_crop_overlaps(torch.zeros(1, 2, 3, 4, 4), [torch.zeros(2, 3, 4, 4)] * 2,
                           torch.zeros(2, 3, 4), [(8, 8)] * 2)
    with pytest.raises(ValueError, match='target_maps'):
        pool_crop_overlaps(torch.zeros(2, 3, 4, 4), [torch.zeros(2, 3, 4, 4)],
                           torch.zeros(2, 1, 4), [(8, 8)])
    with pytest.raises(ValueError, match='box_a and box_b'):
        overlap_rois(torch.zeros(2, 4), torch.zeros(3, 4), 8)

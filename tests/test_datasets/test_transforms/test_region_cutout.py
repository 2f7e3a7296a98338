import numpy as np
import pytest
import torch
from mmengine.dataset import default_collate

from cotap_mm.datasets.transforms.region_cutout import (RegionCollaborativeCutout,
                                                        region_cutout_mask, sample_cut_ratio)
from cotap_mm.structures.boxes import sample_grid_box
from mmpretrain.registry import TRANSFORMS


def _box_fracs(mask, boxes):
    return np.array([mask[y1:y2, x1:x2].mean() for x1, y1, x2, y2 in boxes])


@pytest.mark.parametrize('grid,ratio', [(14, 0.3), (14, 0.5), (8, 0.4)])
def test_every_box_gets_about_the_cut_ratio(grid, ratio):
    rng = np.random.RandomState(0)
    fracs, totals = [], []
    for _ in range(300):
        mask, boxes, r = region_cutout_mask(grid, rng, ratio=ratio, return_boxes=True)
        assert r == ratio and mask.shape == (grid, grid) and mask.dtype == bool
        assert boxes.shape == (9, 4)
        fracs.append(_box_fracs(mask, boxes))
        totals.append(mask.mean())
    fracs = np.array(fracs)  # [draws, 9 cells]
    # each of the 3 x 3 cells' boxes is cut by about r on average (the central box, overlapped
    # by all others, collects a little extra from their later cuts) ...
    assert np.all(np.abs(fracs.mean(axis=0) - ratio) < 0.12), fracs.mean(axis=0)
    assert abs(fracs.mean() - ratio) < 0.06
    # ... and per draw (the collaborative rule keeps every box near r)
    assert np.abs(fracs - ratio).mean() < 0.12
    # the whole grid is cut by about r too (the boxes cover most of it)
    assert abs(np.mean(totals) - ratio) < 0.1


def test_boxes_lie_in_their_cells():
    rng = np.random.RandomState(1)
    g = 14
    for _ in range(100):
        _, boxes, _ = region_cutout_mask(g, rng, ratio=0.4, return_boxes=True)
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            i, j = divmod(k, 3)
            assert 0 <= x1 < x2 <= g and 0 <= y1 < y2 <= g
            # the (unclipped) centre is in the central half of cell (i, j): the box overlaps it
            cy0, cy1 = i * g / 3 + g / 12, i * g / 3 + g / 4
            cx0, cx1 = j * g / 3 + g / 12, j * g / 3 + g / 4
            assert y1 <= cy1 + g / 3 and y2 >= cy0 and x1 <= cx1 + g / 3 and x2 >= cx0
            area = (x2 - x1) * (y2 - y1) / g**2
            assert area <= 0.30 * 1.6  # rounding to whole patches, never far above the range


def test_ratio_zero_half_of_the_time_and_uniform_otherwise():
    rng = np.random.RandomState(0)
    ratios = np.array([sample_cut_ratio(rng, (0.0, 0.4), (0.0, 0.2)) for _ in range(4000)])
    zero = ratios == 0
    assert 0.46 < zero.mean() < 0.54
    nz = ratios[~zero]
    assert nz.min() >= 0.2 and nz.max() <= 0.6
    assert abs(nz.mean() - 0.4) < 0.01
    # uniform on [0.2, 0.6]: each quarter holds about a quarter
    hist, _ = np.histogram(nz, bins=4, range=(0.2, 0.6))
    assert np.all(np.abs(hist / len(nz) - 0.25) < 0.04), hist
    # masks: empty exactly when r == 0
    rng = np.random.RandomState(5)
    for _ in range(200):
        mask, _, r = region_cutout_mask(14, rng, return_boxes=True)
        assert bool(mask.any()) == (r > 0)


def test_deterministic_given_seed():
    a = region_cutout_mask(14, np.random.RandomState(7), ratio=0.4)
    b = region_cutout_mask(14, np.random.RandomState(7), ratio=0.4)
    c = region_cutout_mask(14, np.random.RandomState(8), ratio=0.4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    g1 = region_cutout_mask((8, 10), np.random.default_rng(3), ratio=0.3)
    g2 = region_cutout_mask((8, 10), np.random.default_rng(3), ratio=0.3)
    assert g1.shape == (8, 10) and np.array_equal(g1, g2)

    t1 = RegionCollaborativeCutout(grid_size=14, num_masks=2, seed=11)
    t2 = RegionCollaborativeCutout(grid_size=14, num_masks=2, seed=11)
    for _ in range(5):
        r1, r2 = t1(dict()), t2(dict())
        assert np.array_equal(r1['rcc_mask'], r2['rcc_mask'])
        assert np.array_equal(r1['rcc_mask_ratio'], r2['rcc_mask_ratio'])


def test_transform_outputs_and_grid_inference():
    views = [np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)]
    t = TRANSFORMS.build(dict(type='RegionCollaborativeCutout', patch_size=8, seed=0))
    out = t(dict(img=views))
    assert out['rcc_mask'].shape == (2, 8, 8) and out['rcc_mask'].dtype == bool
    assert out['rcc_mask_ratio'].shape == (2, )
    for m, r in zip(out['rcc_mask'], out['rcc_mask_ratio']):
        assert bool(m.any()) == (r > 0)
    # num_global_crops (GeometricMultiView) decides the number of masks
    out = t(dict(img=views + [np.zeros((32, 32, 3), np.uint8)], num_global_crops=2))
    assert out['rcc_mask'].shape == (2, 8, 8)
    out = TRANSFORMS.build(dict(type='RegionCollaborativeCutout', grid_size=(4, 6), num_masks=3,
                                key='m', seed=0))(dict())
    assert out['m'].shape == (3, 4, 6)
    # packed through PackInputs and collated: a per-sample field of the data samples
    pack = TRANSFORMS.build(dict(type='PackInputs', algorithm_keys=['rcc_mask']))
    batch = default_collate([pack(t(dict(img=[v.copy() for v in views]))) for _ in range(3)])
    assert len(batch['inputs']) == 2 and batch['inputs'][0].shape == (3, 3, 64, 64)
    assert np.asarray(batch['data_samples'][1].rcc_mask).shape == (2, 8, 8)


def test_sample_grid_box_fits_when_no_centre_is_given():
    rng = np.random.RandomState(0)
    for _ in range(200):
        x1, y1, x2, y2 = sample_grid_box((10, 12), rng, (0.1, 0.3), (0.5, 2.0))
        assert 0 <= x1 < x2 <= 12 and 0 <= y1 < y2 <= 10
        assert 0.03 <= (x2 - x1) * (y2 - y1) / 120 <= 0.45


def test_bad_arguments():
    with pytest.raises(ValueError, match='grid_hw'):
        region_cutout_mask(0, np.random.RandomState(0))
    with pytest.raises(ValueError, match='ratio'):
        region_cutout_mask(14, np.random.RandomState(0), ratio=1.2)
    with pytest.raises(ValueError, match='pred_ratio'):
        sample_cut_ratio(np.random.RandomState(0), (0.1, 0.4), (0.2, 0.1))
    with pytest.raises(ValueError, match='grid_size or patch_size'):
        RegionCollaborativeCutout()
    with pytest.raises(ValueError, match='box_area'):
        RegionCollaborativeCutout(grid_size=14, box_area=(0.3, 0.1))
    with pytest.raises(ValueError, match='multiple of patch_size'):
        RegionCollaborativeCutout(patch_size=8)(dict(img=np.zeros((60, 64, 3), np.uint8)))
    assert torch.is_tensor(torch.as_tensor(region_cutout_mask(4, np.random.RandomState(0), 0.0)))

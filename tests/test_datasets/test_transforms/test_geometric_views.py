
import cv2
import numpy as np
import pytest
import torch
from mmengine.dataset import default_collate
from PIL import Image

import cotap_mm.datasets.transforms.photometric  # noqa: F401  (registers HueSafeColorJitter)
from cotap_mm.datasets.transforms.formatting import PackGeometricViews
from cotap_mm.datasets.transforms.geometric_views import GeometricMultiView, sample_crop_box
from cotap_mm.structures.boxes import box_area, box_intersection, overlap_in_crop_coords
from mmpretrain.registry import TRANSFORMS


def _image(h=90, w=120, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


def _inter_area_ref(a, b):
    """Brute-force intersection area of two integer boxes by counting pixels."""
    mask = np.zeros((200, 200), dtype=bool)
    mask[int(a[1]):int(a[3]), int(a[0]):int(a[2])] = True
    mask2 = np.zeros_like(mask)
    mask2[int(b[1]):int(b[3]), int(b[0]):int(b[2])] = True
    return int((mask & mask2).sum())


# ----------------------------------------------------------------------------- sample_crop_box
def test_sample_crop_box_ranges_and_rngs():
    h, w = 90, 120
    for rng in (np.random.RandomState(1), np.random.default_rng(1)):
        for _ in range(200):
            x1, y1, x2, y2 = sample_crop_box(h, w, (0.05, 0.1), (3 / 4, 4 / 3), rng)
            assert all(float(v).is_integer() for v in (x1, y1, x2, y2))
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            cw, ch = x2 - x1, y2 - y1
            # rounding of the side lengths moves area and ratio a little
            assert 0.05 * h * w * 0.8 <= cw * ch <= 0.1 * h * w * 1.2
            assert 3 / 4 * 0.85 <= cw / ch <= 4 / 3 * 1.15


def test_sample_crop_box_deterministic_and_fallback():
    a = [sample_crop_box(50, 70, (0.25, 1.0), (0.75, 4 / 3), np.random.RandomState(3))
         for _ in range(3)]
    b = [sample_crop_box(50, 70, (0.25, 1.0), (0.75, 4 / 3), np.random.RandomState(3))
         for _ in range(3)]
    assert a == b
    # scale (1, 1) with ratio >= 2 cannot fit a square image: central crop with ratio 2
    assert sample_crop_box(100, 100, (1.0, 1.0), (2.0, 3.0), np.random.RandomState(0)) == \
        (0.0, 25.0, 100.0, 75.0)
    with pytest.raises(ValueError, match='scale'):
        sample_crop_box(10, 10, (0.5, 0.2), (1.0, 1.0))
    with pytest.raises(ValueError, match='ratio'):
        sample_crop_box(10, 10, (0.2, 0.5), (0.0, 1.0))
    with pytest.raises(ValueError, match='h and w'):
        sample_crop_box(0, 10, (0.2, 0.5), (1.0, 1.0))


# ----------------------------------------------------------------------------- box helpers
def test_box_intersection_and_area():
    a = np.array([10., 20., 50., 60.])
    b = np.array([30., 0., 100., 40.])
    np.testing.assert_allclose(box_intersection(a, b), [30, 20, 50, 40])
    assert box_area(box_intersection(a, b)) == 400
    # disjoint -> zero area
    assert box_area(box_intersection(a, [60., 70., 80., 90.])) == 0
    # broadcasting against a brute-force pixel count, numpy and torch
    rng = np.random.RandomState(0)
    boxes = np.array([sample_crop_box(150, 180, (0.05, 0.5), (0.75, 4 / 3), rng)
                      for _ in range(6)])
    areas = box_area(box_intersection(boxes[:, None], boxes[None]))
    areas_t = box_area(box_intersection(torch.tensor(boxes)[:, None], torch.tensor(boxes)[None]))
    for i in range(6):
        for j in range(6):
            assert areas[i, j] == _inter_area_ref(boxes[i], boxes[j])
            assert areas_t[i, j].item() == _inter_area_ref(boxes[i], boxes[j])
    with pytest.raises(ValueError, match='last dimension'):
        box_intersection(np.zeros(3), a)


def test_overlap_in_crop_coords_constructed():
    a = [10., 20., 50., 60.]  # 40 x 40 crop, resized to 80 x 80 (scale 2)
    b = [30., 0., 100., 40.]
    np.testing.assert_allclose(overlap_in_crop_coords(a, b, 80), [40, 0, 80, 40])
    np.testing.assert_allclose(overlap_in_crop_coords(a, b, 80, flip_a=True), [0, 0, 40, 40])
    np.testing.assert_allclose(overlap_in_crop_coords(a, b, (40, 160)), [80, 0, 160, 20])
    out = overlap_in_crop_coords(torch.tensor([a, a]), torch.tensor([b, b]), 80,
                                 flip_a=torch.tensor([False, True]))
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, torch.tensor([[40., 0, 80, 40], [0., 0, 40, 40]]))
    assert box_area(overlap_in_crop_coords(a, [60., 0., 70., 10.], 80)) == 0

    # pixel check: paint box b white, crop a with nearest x2 upsampling (and flips)
    img = np.zeros((100, 120, 3), dtype=np.uint8)
    img[int(b[1]):int(b[3]), int(b[0]):int(b[2])] = 255
    for flip in (False, True):
        crop = cv2.resize(img[20:60, 10:50], (80, 80), interpolation=cv2.INTER_NEAREST)
        if flip:
            crop = crop[:, ::-1]
        x1, y1, x2, y2 = overlap_in_crop_coords(a, b, 80, flip_a=flip).astype(int)
        expected = np.zeros((80, 80), dtype=bool)
        expected[y1:y2, x1:x2] = True
        np.testing.assert_array_equal(crop[..., 0] == 255, expected)


# ----------------------------------------------------------------------------- GeometricMultiView
@pytest.mark.parametrize('backend', ['pillow', 'cv2'])
@pytest.mark.parametrize('flip_prob', [0.0, 0.5, 1.0])
def test_crops_reproduce_from_recorded_boxes(backend, flip_prob):
    img = _image()
    t = GeometricMultiView(num_global=2, global_size=(24, 32), num_local=5, local_size=12,
                           flip_prob=flip_prob, teacher_views='all', backend=backend, seed=7)
    r = t(dict(img=img))
    boxes, flips = r['crop_boxes'], r['crop_flips']
    assert boxes.shape == (7, 4) and boxes.dtype == np.float32
    assert flips.shape == (7, ) and flips.dtype == bool
    assert r['ori_shape'] == (90, 120)
    if flip_prob == 0.0:
        assert not flips.any()
    if flip_prob == 1.0:
        assert flips.all()
    for v in range(7):
        x1, y1, x2, y2 = boxes[v].astype(int)
        out_h, out_w = (24, 32) if v < 2 else (12, 12)
        if backend == 'pillow':
            ref = np.array(Image.fromarray(img[y1:y2, x1:x2]).resize((out_w, out_h),
                                                                     Image.BILINEAR))
        else:
            ref = cv2.resize(img[y1:y2, x1:x2], (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        if flips[v]:
            ref = ref[:, ::-1]
        np.testing.assert_array_equal(r['teacher_img'][v], ref)
        np.testing.assert_array_equal(r['img'][v], ref)  # no student pipeline: same crop
    if flip_prob == 0.5:
        assert 0 < flips.sum() < 7  # seed 7 gives a mix; checks that both flip states occur


def _overlaps(boxes, img_area):
    return box_area(box_intersection(boxes[:, None], boxes[None])) / img_area


def test_overlap_constraint_holds_and_matters():
    kw = dict(num_global=2, global_size=8, num_local=4, local_size=8, teacher_views='global')
    img = _image(80, 100)
    t = GeometricMultiView(min_overlap=(0.02, 0.01), max_overlap_tries=1000, seed=0, **kw)
    for _ in range(100):
        ov = _overlaps(t(dict(img=img))['crop_boxes'], 80 * 100)
        assert ov[0, 1] >= 0.02
        assert (ov[2:, :2] >= 0.01).all()
    # 'any': each local overlaps at least one global crop
    t_any = GeometricMultiView(min_overlap=(0.02, 0.01), local_overlap_mode='any',
                               max_overlap_tries=1000, seed=0, **kw)
    for _ in range(50):
        ov = _overlaps(t_any(dict(img=img))['crop_boxes'], 80 * 100)
        assert (ov[2:, :2].max(1) >= 0.01).all()
    # without the constraint the same statistic is violated sometimes
    t_free = GeometricMultiView(min_overlap=None, seed=0, **kw)
    violations = sum(
        (_overlaps(t_free(dict(img=img))['crop_boxes'], 80 * 100)[2:, :2] < 0.01).any()
        for _ in range(100))
    assert violations > 0


def test_overlap_constraint_fallback_keeps_best():
    # impossible: two globals of at most 30 % area must overlap by 90 % of the image
    t = GeometricMultiView(num_global=2, global_size=8, global_scale=(0.25, 0.3), num_local=0,
                           min_overlap=(0.9, 0.0), max_overlap_tries=20, seed=0)
    boxes = t(dict(img=_image(60, 60)))['crop_boxes']
    assert boxes.shape == (2, 4)
    # the kept candidate is the best of the 20 tries: recompute with the same RNG stream
    rng = np.random.RandomState(0)
    first = sample_crop_box(60, 60, (0.25, 0.3), t.ratio, rng)
    cands = [sample_crop_box(60, 60, (0.25, 0.3), t.ratio, rng) for _ in range(20)]
    best = max(cands, key=lambda c: _inter_area_ref(first, c))
    np.testing.assert_array_equal(boxes[0], first)
    assert _inter_area_ref(boxes[0], boxes[1]) == _inter_area_ref(first, best)


def test_determinism():
    img = _image()
    cfg = dict(global_size=16, local_size=8, flip_prob=0.5,
               student_pipeline=[dict(type='HueSafeColorJitter', brightness=0.4, hue=0.2)])
    r1 = GeometricMultiView(seed=3, **cfg)(dict(img=img))
    r2 = GeometricMultiView(seed=3, **cfg)(dict(img=img))
    r3 = GeometricMultiView(seed=4, **cfg)(dict(img=img))
    np.testing.assert_array_equal(r1['crop_boxes'], r2['crop_boxes'])
    assert not np.array_equal(r1['crop_boxes'], r3['crop_boxes'])
    # global np.random state (what mmengine seeds per worker), student jitter included
    outs = []
    for _ in range(2):
        np.random.seed(11)
        outs.append(GeometricMultiView(**cfg)(dict(img=img)))
    np.testing.assert_array_equal(outs[0]['crop_boxes'], outs[1]['crop_boxes'])
    np.testing.assert_array_equal(outs[0]['crop_flips'], outs[1]['crop_flips'])
    for a, b in zip(outs[0]['img'], outs[1]['img']):
        np.testing.assert_array_equal(a, b)


def test_student_pipeline_only_touches_student():
    img = _image()
    t = GeometricMultiView(global_size=16, local_size=8, teacher_views='all', seed=0,
                           student_pipeline=[dict(type='HueSafeColorJitter',
                                                  brightness=(0.5, 0.5))])
    r = t(dict(img=img))
    assert len(r['img']) == 6 and len(r['teacher_img']) == 6
    np.testing.assert_array_equal(r['teacher_view_indices'], np.arange(6))
    for s, c in zip(r['img'], r['teacher_img']):
        assert s.dtype == np.uint8
        np.testing.assert_array_equal(s, np.rint(c.astype(np.float32) * 0.5).astype(np.uint8))
    # mmcv's RandomGrayscale and mmpretrain's GaussianBlur work on the numpy crops too
    t2 = GeometricMultiView(global_size=16, local_size=8, seed=0, student_pipeline=[
        dict(type='RandomGrayscale', prob=1.0, keep_channels=True,
             channel_weights=(0.114, 0.587, 0.299)),
        dict(type='GaussianBlur', magnitude_range=(0.1, 2.0), magnitude_std='inf', prob=1.0)
    ])
    r2 = t2(dict(img=img))
    assert len(r2['teacher_img']) == 2
    for s in r2['img']:
        assert s.shape[2] == 3 and (s[..., 0] == s[..., 1]).all()


def test_registry_and_errors():
    t = TRANSFORMS.build(dict(type='GeometricMultiView', global_size=8, local_size=4))
    assert isinstance(t, GeometricMultiView)
    with pytest.raises(TypeError, match='img'):
        t(dict(img=[1, 2, 3]))
    with pytest.raises(ValueError, match='global_size'):
        GeometricMultiView(global_size=0)
    with pytest.raises(ValueError, match='local_scale'):
        GeometricMultiView(local_scale=(0.2, 0.1))
    with pytest.raises(ValueError, match='min_overlap'):
        GeometricMultiView(min_overlap=(0.02, ))
    with pytest.raises(ValueError, match='teacher_views'):
        GeometricMultiView(teacher_views='local')
    with pytest.raises(ValueError, match='num_global'):
        GeometricMultiView(num_global=-1)
    with pytest.raises(TypeError, match='student_pipeline'):
        GeometricMultiView(student_pipeline=[3])


# ----------------------------------------------------------------------------- packing
def test_pack_and_selfsup_preprocessor():
    from mmpretrain.models import SelfSupDataPreprocessor
    t = GeometricMultiView(global_size=16, local_size=8, seed=0, flip_prob=0.5,
                           student_pipeline=[dict(type='HueSafeColorJitter', brightness=0.5)])
    pack = TRANSFORMS.build(dict(type='PackGeometricViews', algorithm_keys=('nn_index', )))
    results = [t(dict(img=_image(seed=i), img_path=f'{i}.jpg', sample_idx=i, nn_index=i + 10))
               for i in range(3)]
    packed = [pack(dict(r)) for r in results]
    sample = packed[0]['data_samples']
    assert len(packed[0]['inputs']) == 6 + 2
    assert packed[0]['inputs'][0].shape == (3, 16, 16)
    assert packed[0]['inputs'][0].dtype == torch.uint8
    assert sample.num_student_views == 6 and sample.num_teacher_views == 2
    assert sample.num_global_crops == 2 and sample.num_local_crops == 4
    assert sample.img_path == '0.jpg' and sample.ori_shape == (90, 120)
    assert sample.nn_index == 10

    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    pre = SelfSupDataPreprocessor(mean=mean, std=std, to_rgb=True)
    out = pre(default_collate(packed))
    inputs, samples = out['inputs'], out['data_samples']
    assert [tuple(x.shape) for x in inputs] == [(3, 3, 16, 16)] * 2 + [(3, 3, 8, 8)] * 4 + \
        [(3, 3, 16, 16)] * 2
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    for b in range(3):
        for v in range(6):
            ref = (torch.from_numpy(results[b]['img'][v][..., ::-1].copy()).permute(2, 0, 1)
                   .float() - m) / s
            torch.testing.assert_close(inputs[v][b], ref)
        for k in range(2):
            ref = (torch.from_numpy(results[b]['teacher_img'][k][..., ::-1].copy())
                   .permute(2, 0, 1).float() - m) / s
            torch.testing.assert_close(inputs[6 + k][b], ref)
        torch.testing.assert_close(samples[b].crop_boxes,
                                   torch.from_numpy(results[b]['crop_boxes']))
        assert torch.equal(samples[b].crop_flips, torch.from_numpy(results[b]['crop_flips']))
        assert torch.equal(samples[b].teacher_view_indices, torch.tensor([0, 1]))


def test_pack_errors():
    pack = PackGeometricViews()
    with pytest.raises(KeyError, match='teacher_img'):
        pack(dict(img=[np.zeros((4, 4, 3), np.uint8)], crop_boxes=np.zeros((1, 4)),
                  crop_flips=np.zeros(1, bool), num_global_crops=1, num_local_crops=0))
    with pytest.raises(ValueError, match='crop_boxes'):
        pack(dict(img=[np.zeros((4, 4, 3), np.uint8)], teacher_img=[], crop_boxes=np.zeros((2, 4)),
                  crop_flips=np.zeros(1, bool), num_global_crops=1, num_local_crops=0))

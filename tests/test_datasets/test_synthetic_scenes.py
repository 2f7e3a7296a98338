import json
import os.path as osp
import time

import numpy as np
import pytest

from cotap_mm.datasets.synthetic_scenes import (SHAPES, TEXTURES, SyntheticScenes,
                                                class_descriptions, class_shape_texture,
                                                generate_scene, scene_seed, synthetic_metainfo,
                                                write_ade20k_layout)
from cotap_test_helpers.tool_runs import load_tool

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _load_tool(name):
    return load_tool(f'tools/analysis_tools/{name}.py')


# ----------------------------------------------------------------------------- generator


def test_determinism_and_per_index_seeding():
    a = generate_scene(scene_seed(3, 'train', 5))
    b = generate_scene(scene_seed(3, 'train', 5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = generate_scene(scene_seed(3, 'train', 6))
    assert not np.array_equal(a[0], c[0])
    # split and data set seed change the image
    assert not np.array_equal(a[0], generate_scene(scene_seed(3, 'val', 5))[0])
    assert not np.array_equal(a[0], generate_scene(scene_seed(4, 'train', 5))[0])
    seeds = {scene_seed(0, s, i) for s in ('train', 'val') for i in range(50)}
    assert len(seeds) == 100


def test_shapes_dtypes_and_class_range():
    for size, k in ((64, 3), (96, 8), (128, 20)):
        for i in range(15):
            img, mask = generate_scene(scene_seed(1, 'train', i), size=size, num_classes=k)
            assert img.shape == (size, size, 3) and img.dtype == np.uint8
            assert mask.shape == (size, size) and mask.dtype == np.uint8
            assert mask.max() <= k
            assert (mask == 0).any(), 'background should be visible'


def test_class_shape_texture_pairs_unique():
    pairs = [class_shape_texture(c) for c in range(1, len(SHAPES) * len(TEXTURES) + 1)]
    assert len(set(pairs)) == len(pairs)
    # default 8 classes: 8 different shapes and 8 different textures
    first = pairs[:8]
    assert len({p[0] for p in first}) == 8 and len({p[1] for p in first}) == 8
    assert class_descriptions(2) == ['background', 'disc/fine_stripes', 'square/checker']
    with pytest.raises(ValueError, match='class_id'):
        class_shape_texture(0)


def test_single_object_mask_matches_drawn_pixels():
    for i in range(10):
        img, mask, objs = generate_scene(
            scene_seed(0, 'single', i), min_objects=1, max_objects=1, clutter=False,
            noise_std=0.0, return_objects=True)
        drawn = img.astype(int).sum(-1) > 0  # black background, object colours have V >= 0.2
        np.testing.assert_array_equal(mask > 0, drawn)
        assert len(objs) == 1
        np.testing.assert_array_equal(objs[0]['region'], mask > 0)
        assert set(np.unique(mask[mask > 0])) == {objs[0]['class_id']}
        # the object is textured: two colours (or a gradient) inside, not a flat fill
        if objs[0]['texture'] != 'gradient':
            assert len(np.unique(img[mask > 0].reshape(-1, 3), axis=0)) >= 2


def test_disc_region_matches_analytic_circle():
    found = 0
    for i in range(60):
        _, _, objs = generate_scene(
            scene_seed(0, 'disc', i), num_classes=1, min_objects=1, max_objects=1,
            clutter=False, noise_std=0.0, return_objects=True)
        o = objs[0]
        assert o['shape'] == 'disc'
        yy, xx = np.mgrid[0:96, 0:96]
        cy, cx = o['center']
        ref = (yy + 0.5 - cy)**2 + (xx + 0.5 - cx)**2 <= o['radius']**2
        np.testing.assert_array_equal(o['region'], ref)
        found += 1
    assert found == 60


def test_occlusion_top_most_wins_and_classes_have_object_pixels():
    n_overlaps = 0
    for i in range(20):
        img, mask, inst, objs = generate_scene(
            scene_seed(2, 'occ', i), min_objects=4, max_objects=6, clutter=False,
            noise_std=0.0, return_instances=True, return_objects=True)
        ref_mask = np.zeros_like(mask)
        ref_inst = np.zeros_like(inst)
        cover = np.zeros(mask.shape, dtype=int)
        for o in objs:  # painter's order
            ref_mask[o['region']] = o['class_id']
            ref_inst[o['region']] = o['instance_id']
            cover += o['region']
        np.testing.assert_array_equal(mask, ref_mask)
        np.testing.assert_array_equal(inst, ref_inst)
        n_overlaps += int((cover >= 2).sum())
        # every class present in the mask is drawn (non-black pixels) and only there
        for c in np.unique(mask):
            drawn = img[mask == c].astype(int).sum(-1) > 0
            assert drawn.all() if c > 0 else not drawn.any()
        # the pixels of the top-most object show that object's colours, not the occluded one's
        for o in objs:
            vis = inst == o['instance_id']
            if vis.any():
                assert (mask[vis] == o['class_id']).all()
    assert n_overlaps > 0, 'the test scenes should contain overlapping objects'


def test_cluttered_background_is_not_flat_and_colour_is_random():
    img, mask = generate_scene(scene_seed(0, 'train', 0), noise_std=0.0)
    bg = img[mask == 0].astype(float)
    assert bg.std(0).max() > 3.0  # textured / noisy background
    # the same class appears in many different colours across scenes
    means = []
    for i in range(40):
        img, mask = generate_scene(scene_seed(5, 'col', i), num_classes=2)
        if (mask == 1).sum() > 20:
            means.append(img[mask == 1].reshape(-1, 3).mean(0))
    assert len(means) >= 10
    assert np.std(np.array(means), axis=0).max() > 25.0


def test_speed():
    t = time.perf_counter()
    for i in range(20):
        generate_scene(scene_seed(0, 'speed', i))
    per_image = (time.perf_counter() - t) / 20
    assert per_image < 0.025, f'{per_image * 1000:.1f} ms per image'  # ~3.5 ms measured


def test_bad_arguments():
    with pytest.raises(ValueError, match='num_classes'):
        generate_scene(0, num_classes=0)
    with pytest.raises(ValueError, match='max_objects'):
        generate_scene(0, min_objects=4, max_objects=2)
    with pytest.raises(TypeError, match='seed'):
        generate_scene(1.5)
    with pytest.raises(ValueError, match='size'):
        generate_scene(0, size=4)
    with pytest.raises(TypeError, match='split'):
        scene_seed(0, 1, 0)
    with pytest.raises(ValueError, match='index'):
        scene_seed(0, 'train', -1)


# ----------------------------------------------------------------------------- datasets


def test_mmpretrain_dataset_lazy_and_consistent():
    from mmpretrain.registry import DATASETS
    ds = DATASETS.build(
        dict(type='SyntheticScenes', num_samples=7, split='train', seed=2, image_size=64,
             num_classes=3, with_mask=True))
    assert isinstance(ds, SyntheticScenes)
    assert len(ds) == 7
    assert ds.get_data_info(4)['scene_index'] == 4 and 'img' not in ds.get_data_info(4)
    r5 = ds[5]
    img, mask = generate_scene(scene_seed(2, 'train', 5), size=64, num_classes=3)
    np.testing.assert_array_equal(r5['img'], img[..., ::-1])  # BGR like LoadImageFromFile
    np.testing.assert_array_equal(r5['gt_seg_map'], mask)
    assert r5['img_shape'] == (64, 64) and r5['ori_shape'] == (64, 64)
    np.testing.assert_array_equal(ds[5]['img'], r5['img'])  # access order does not matter
    assert ds.metainfo['classes'] == ('background', 'class1', 'class2', 'class3')


def test_mmpretrain_dataset_with_pipeline():
    from mmpretrain.registry import DATASETS
    ds = DATASETS.build(
        dict(type='SyntheticScenes', num_samples=3, image_size=64, channel_order='rgb',
             pipeline=[dict(type='RandomResizedCrop', scale=32),
                       dict(type='PackInputs')]))
    out = ds[0]
    assert tuple(out['inputs'].shape) == (3, 32, 32)
    with pytest.raises(ValueError, match='channel_order'):
        SyntheticScenes(num_samples=2, channel_order='xyz')
    with pytest.raises(ValueError, match='num_samples'):
        SyntheticScenes(num_samples=-1)


def test_mmseg_dataset_yields_gt_seg_map():
    from mmseg.registry import DATASETS as SEG_DATASETS
    ds = SEG_DATASETS.build(
        dict(type='SyntheticScenesSeg', num_samples=4, split='val', seed=1, image_size=64,
             num_classes=5,
             pipeline=[dict(type='RandomFlip', prob=0.0), dict(type='PackSegInputs')]))
    assert len(ds) == 4
    assert len(ds.metainfo['classes']) == 6 and len(ds.metainfo['palette']) == 6
    out = ds[2]
    img, mask = generate_scene(scene_seed(1, 'val', 2), size=64, num_classes=5)
    assert tuple(out['inputs'].shape) == (3, 64, 64)
    seg = out['data_samples'].gt_sem_seg.data
    assert tuple(seg.shape) == (1, 64, 64)
    np.testing.assert_array_equal(seg[0].numpy(), mask)
    np.testing.assert_array_equal(out['inputs'].permute(1, 2, 0).numpy(), img[..., ::-1])


def test_mmseg_dataset_reduce_zero_label_and_flip():
    from mmseg.registry import DATASETS as SEG_DATASETS
    ds = SEG_DATASETS.build(
        dict(type='SyntheticScenesSeg', num_samples=2, image_size=64, num_classes=3,
             reduce_zero_label=True, pipeline=[dict(type='RandomFlip', prob=1.0,
                                                    direction='horizontal')]))
    r = ds[0]
    _, mask = generate_scene(scene_seed(0, 'val', 0), size=64, num_classes=3)
    ref = mask.astype(int) - 1
    ref[mask == 0] = 255
    np.testing.assert_array_equal(r['gt_seg_map'], ref[:, ::-1])  # flipped with the image
    assert r['seg_fields'] == ['gt_seg_map']


# ----------------------------------------------------------------------------- files


def _check_layout(root, n_train, n_val, k, seed):
    from mmcv.transforms import LoadImageFromFile
    from mmseg.datasets import BaseSegDataset
    from mmseg.datasets.transforms import LoadAnnotations
    ds = BaseSegDataset(
        data_root=root,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        img_suffix='.jpg',
        seg_map_suffix='.png',
        metainfo=synthetic_metainfo(k),
        reduce_zero_label=False,
        pipeline=[LoadImageFromFile(), LoadAnnotations()])  # mmseg's own file loading
    assert len(ds) == n_train
    r = ds[1]
    img, mask = generate_scene(scene_seed(seed, 'train', 1), size=64, num_classes=k)
    np.testing.assert_array_equal(r['gt_seg_map'], mask)
    err = np.abs(r['img'][..., ::-1].astype(int) - img).mean()  # JPEG; BGR on load
    other = generate_scene(scene_seed(seed, 'train', 0), size=64, num_classes=k)[0]
    assert err < 5 and err < 0.2 * np.abs(other.astype(int) - img).mean(), err
    val = BaseSegDataset(
        data_root=root,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        img_suffix='.jpg', seg_map_suffix='.png', metainfo=synthetic_metainfo(k))
    assert len(val) == n_val


def test_write_ade20k_layout_readable_by_mmseg(tmp_path):
    root = str(tmp_path / 'scenes')
    assert write_ade20k_layout(root, 3, 2, seed=4, size=64, num_classes=4) == dict(train=3, val=2)
    for sub in ('images/training', 'images/validation', 'annotations/training',
                'annotations/validation'):
        assert osp.isdir(osp.join(root, sub))
    assert osp.isfile(osp.join(root, 'images/validation/00000001.jpg'))
    assert osp.isfile(osp.join(root, 'annotations/validation/00000001.png'))
    with open(osp.join(root, 'synthetic_scenes.json')) as f:
        meta = json.load(f)
    assert meta['classes'][0] == 'background' and len(meta['classes']) == 5
    _check_layout(root, 3, 2, 4, 4)


def test_make_synthetic_scenes_cli(tmp_path):
    tool = _load_tool('make_synthetic_scenes')
    root = str(tmp_path / 'cli')
    tool.main(['--out', root, '--num-train', '2', '--num-val', '1', '--seed', '7',
               '--image-size', '64', '--num-classes', '3'])
    _check_layout(root, 2, 1, 3, 7)

import os.path as osp

import numpy as np
import pytest
from PIL import Image

from cotap_mm.datasets.coco_stuff27 import map_cocostuff_to_27
from cotap_mm.evaluation.labelled_sets import load_seg_arrays, seg_dataset_cfg
from cotap_test_helpers.seg_data import write_ade20k, write_coco_stuff, write_voc_aug


@pytest.fixture(scope='module')
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp('layouts')
    write_voc_aug(str(root / 'voc'), num_train=2, num_val=2, size=64)
    write_coco_stuff(str(root / 'coco'), num_train=2, num_val=3, size=64)
    write_ade20k(str(root / 'ade'), num_train=2, num_val=2, size=64)
    return root


def _png(path):
    return np.asarray(Image.open(path))


def test_voc_layout_reads_palette_pngs(layouts):
    root = str(layouts / 'voc')
    imgs, masks, classes = load_seg_arrays(seg_dataset_cfg('voc', root, 'val'), 64)
    assert len(classes) == 21 and imgs.shape == (2, 64, 64, 3) and imgs.dtype == np.uint8
    names = open(osp.join(root, 'ImageSets/Segmentation/val.txt')).read().split()
    for i, name in enumerate(names):
        np.testing.assert_array_equal(masks[i], _png(osp.join(root, 'SegmentationClass',
                                                              name + '.png')))
        rgb = np.asarray(Image.open(osp.join(root, 'JPEGImages', name + '.jpg')).convert('RGB'))
        assert np.abs(imgs[i].astype(int) - rgb.astype(int)).mean() < 2  # RGB, not BGR
    # squashed: nearest labels keep only existing values
    _, small, _ = load_seg_arrays(seg_dataset_cfg('voc', root, 'val'), 32)
    assert small.shape == (2, 32, 32) and set(np.unique(small)) <= set(np.unique(masks))


def test_coco_stuff27_layout_maps_171_to_27_on_curated_lists(layouts):
    root = str(layouts / 'coco')
    _, masks, classes = load_seg_arrays(seg_dataset_cfg('coco-stuff27', root, 'val'), 64)
    assert len(classes) == 27
    assert masks.shape[0] == 2  # the curated list leaves the last of the 3 images out
    for i, name in enumerate(['000000001001', '000000001002']):
        raw = _png(osp.join(root, 'annotations/val2017', name + '_labelTrainIds.png'))
        np.testing.assert_array_equal(masks[i], map_cocostuff_to_27(raw))
    _, every, _ = load_seg_arrays(seg_dataset_cfg('coco-stuff27', root, 'val', ann_file=''), 64)
    assert every.shape[0] == 3


def test_ade20k_layout_reduces_zero_label_and_caps(layouts):
    root = str(layouts / 'ade')
    _, masks, classes = load_seg_arrays(seg_dataset_cfg('ade20k', root, 'train'), 64,
                                        max_images=1)
    assert len(classes) == 150 and masks.shape[0] == 1
    raw = _png(osp.join(root, 'annotations/training/00000000.png')).astype(np.int64)
    ref = np.where(raw == 0, 255, raw - 1)
    np.testing.assert_array_equal(masks[0], ref)


def test_bad_inputs(layouts, tmp_path):
    with pytest.raises(ValueError, match='dataset must be one of'):
        seg_dataset_cfg('cityscapes', str(layouts / 'voc'), 'val')
    with pytest.raises(FileNotFoundError, match='Coco164kFull_Stuff_Coarse.txt'):
        seg_dataset_cfg('coco-stuff27', str(layouts / 'ade'), 'train')
    with pytest.raises(FileNotFoundError, match='data root'):
        seg_dataset_cfg('voc', str(tmp_path / 'nowhere'), 'val')
    with pytest.raises(FileNotFoundError, match='synthetic_scenes.json'):
        seg_dataset_cfg('synthetic', str(layouts / 'coco'), 'val')
    with pytest.raises(FileNotFoundError, match='images/validation'):
        load_seg_arrays(seg_dataset_cfg('ade20k', str(layouts / 'coco'), 'val'), 32)
    (tmp_path / 'images' / 'validation').mkdir(parents=True)
    (tmp_path / 'annotations' / 'validation').mkdir(parents=True)
    with pytest.raises(ValueError, match='holds no image'):
        load_seg_arrays(seg_dataset_cfg('ade20k', str(tmp_path), 'val'), 32)
    with pytest.raises(ValueError, match='image_size'):
        load_seg_arrays(seg_dataset_cfg('ade20k', str(layouts / 'ade'), 'val'), 0)

"""COCO-Stuff 171/182 -> 27 coarse classes (cotap_mm/datasets/coco_stuff27.py)."""
import importlib.util
import os.path as osp

import numpy as np
import pytest
from mmseg.datasets import COCOStuffDataset

from cotap_mm.datasets.coco_stuff27 import (COCOSTUFF27_CLASSES, COCOSTUFF171_FINE_IDS,
                                            COCOSTUFF_FINE_TO_COARSE27, COCOStuff27Dataset,
                                            cocostuff_label_lut, map_cocostuff_to_27)

# a name per coarse class and some of its members (COCO-Stuff's label hierarchy, labels.md)
EXPECTED = {
    'person': ['person'],
    'vehicle': ['bicycle', 'car', 'airplane', 'boat'],
    'outdoor': ['traffic light', 'stop sign', 'bench'],
    'animal': ['bird', 'dog', 'giraffe'],
    'accessory': ['backpack', 'tie', 'suitcase'],
    'sports': ['frisbee', 'kite', 'tennis racket'],
    'kitchen': ['bottle', 'wine glass', 'bowl'],
    'food-things': ['banana', 'pizza', 'cake'],
    'furniture-things': ['chair', 'bed', 'toilet'],
    'electronic': ['tv', 'laptop', 'cell phone'],
    'appliance': ['microwave', 'sink', 'refrigerator'],
    'indoor': ['book', 'teddy bear', 'toothbrush'],
    'ceiling': ['ceiling-other', 'ceiling-tile'],
    'floor': ['carpet', 'floor-wood', 'floor-marble'],
    'food-stuff': ['food-other', 'fruit', 'salad', 'vegetable'],
    'furniture-stuff': ['cabinet', 'shelf', 'table', 'stairs', 'light'],
    'rawmaterial': ['cardboard', 'metal', 'paper', 'plastic'],
    'textile': ['banner', 'curtain', 'towel', 'pillow', 'rug'],
    'wall': ['wall-brick', 'wall-concrete', 'wall-other', 'wall-wood'],
    'window': ['window-blind', 'window-other'],
    'building': ['bridge', 'house', 'roof', 'skyscraper', 'tent'],
    'ground': ['dirt', 'road', 'sand', 'snow', 'railroad', 'playingfield'],
    'plant': ['grass', 'tree', 'flower', 'bush', 'moss', 'straw'],
    'sky': ['sky-other', 'clouds'],
    'solid': ['hill', 'mountain', 'rock', 'stone', 'wood'],
    'structural': ['fence', 'railing', 'net', 'cage'],
    'water': ['sea', 'river', 'fog', 'waterdrops', 'water-other'],
}


def _mmseg_converter_table():
    """mmseg's own fine id -> train id table (tools/dataset_converters/coco_stuff164k.py)."""
    import mmseg
    path = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', 'dataset_converters',
                    'coco_stuff164k.py')
    if not osp.exists(path):
        pytest.skip(f'{path} not installed')
    spec = importlib.util.spec_from_file_location('mmseg_coco_stuff164k_converter', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.clsID_to_trID


def test_train_ids_match_mmseg_converter():
    table = _mmseg_converter_table()
    assert len(COCOSTUFF171_FINE_IDS) == 171
    for train_id, fine in enumerate(COCOSTUFF171_FINE_IDS):
        assert table[fine] == train_id
    assert set(table) - {255} == set(COCOSTUFF171_FINE_IDS) and table[255] == 255


def test_mapping_structure():
    assert len(COCOSTUFF27_CLASSES) == 27
    assert sorted(COCOSTUFF_FINE_TO_COARSE27) == list(range(182))
    assert set(COCOSTUFF_FINE_TO_COARSE27.values()) == set(range(27))
    # things (fine 0..90) -> 12 thing supercategories, stuff (91..181) -> 15 stuff ones
    assert {COCOSTUFF_FINE_TO_COARSE27[i] for i in range(91)} == set(range(12))
    assert {COCOSTUFF_FINE_TO_COARSE27[i] for i in range(91, 182)} == set(range(12, 27))


def test_171_to_27_by_class_name():
    names = COCOStuffDataset.METAINFO['classes']
    lut = cocostuff_label_lut('mmseg171')
    seen = set()
    for coarse_name, members in EXPECTED.items():
        for m in members:
            got = COCOSTUFF27_CLASSES[lut[names.index(m)]]
            assert got == coarse_name, f'{m}: {got} != {coarse_name}'
            seen.add(m)
    assert len(EXPECTED) == 27 and set(EXPECTED) == set(COCOSTUFF27_CLASSES)


def test_map_constructed_label_map():
    names = COCOStuffDataset.METAINFO['classes']
    label = np.array([[names.index('person'), names.index('sky-other'), 255],
                      [names.index('road'), names.index('wood'), names.index('car')]], np.uint8)
    expected = np.array([[COCOSTUFF27_CLASSES.index('person'), COCOSTUFF27_CLASSES.index('sky'), 255],
                         [COCOSTUFF27_CLASSES.index('ground'), COCOSTUFF27_CLASSES.index('solid'),
                          COCOSTUFF27_CLASSES.index('vehicle')]], np.uint8)
    np.testing.assert_array_equal(map_cocostuff_to_27(label), expected)
    # brute force over every value, both id conventions
    for ids, n in (('mmseg171', 171), ('cocostuff182', 182)):
        allv = np.arange(256, dtype=np.uint8).reshape(16, 16)
        out = map_cocostuff_to_27(allv, label_ids=ids).ravel()
        for v in range(256):
            if v < n:
                fine = COCOSTUFF171_FINE_IDS[v] if ids == 'mmseg171' else v
                assert out[v] == COCOSTUFF_FINE_TO_COARSE27[fine]
            else:
                assert out[v] == 255


def test_bad_input():
    with pytest.raises(ValueError, match='label_ids'):
        cocostuff_label_lut('coco')
    with pytest.raises(TypeError, match='integer'):
        map_cocostuff_to_27(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r'\[0, 255\]'):
        map_cocostuff_to_27(np.array([300]))


def test_dataset_loads_coarse_labels(tmp_path):
    from mmseg.datasets.transforms import LoadAnnotations
    from cotap_test_helpers.seg_data import COCO_TRAIN_IDS, write_coco_stuff
    root = str(tmp_path / 'coco')
    names = write_coco_stuff(root, num_train=3, num_val=1, size=32)
    ds = COCOStuff27Dataset(
        data_root=root, data_prefix=dict(img_path='images/train2017',
                                         seg_map_path='annotations/train2017'),
        ann_file='curated/train2017/Coco164kFull_Stuff_Coarse.txt', pipeline=[])
    assert len(ds) == 2  # the curated list drops the last image
    assert ds.metainfo['classes'] == COCOSTUFF27_CLASSES and len(ds.metainfo['palette']) == 27
    info = ds[0]
    assert osp.basename(info['img_path']) == names['train'][0] + '.jpg'
    res = LoadAnnotations()(info)
    from PIL import Image
    raw = np.array(Image.open(info['seg_map_path']))
    assert set(np.unique(raw)) <= set(COCO_TRAIN_IDS) | {167}
    np.testing.assert_array_equal(res['gt_seg_map'], map_cocostuff_to_27(raw))
    with pytest.raises(ValueError, match='27 classes'):
        COCOStuff27Dataset(data_root=root, metainfo=dict(classes=('a', 'b')), lazy_init=True)

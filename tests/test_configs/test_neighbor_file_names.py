"""One naming for the neighbour files: ``data/<data set>/knn/<data_prefix>_<feature model>_k<K>.npz``,
the same files in the base data configs, every CoTAP config and the commands of their headers."""
import glob
import os.path as osp
import re
from typing import Dict, List, Tuple

import pytest
from mmengine.config import Config

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs/cotap/*.py')) +
                 [osp.join(REPO, 'configs/cotap_vits16_coco.py')] +
                 glob.glob(osp.join(REPO, 'configs/_base_/datasets/cotap_coco_*.py')))
NAME = re.compile(r'^data/(?P<set>[\w-]+)/knn/(?P<prefix>[\w-]+)_(?P<model>[a-z]+_vit[a-z]\d+)'
                  r'_k(?P<k>\d+)\.npz$')
RELEASED_FEATURES = 'dino_vitb16'  # the official nns files: DINO ViT-B features


def _neighbour_datasets(cfg: Config) -> List[Dict]:
    ds = cfg.train_dataloader.dataset
    parts = [ds.get('coco'), ds.get('imagenet')] if ds.get('type') == 'MixedCOCOImageNet' else [ds]
    return [p for p in parts if p is not None and p.get('neighbors_file')]


def _header_outputs(path: str) -> List[str]:
    """The ``--out`` files of the neighbour commands in the header (of the config, else of the
    configs it inherits, e.g. the entry point configs/cotap_vits16_coco.py)."""
    text = open(path).read()
    outs = re.findall(r'--out (\S+\.npz)', ''.join(l for l in text.splitlines(True)
                                                    if l.startswith('#')))
    if not outs:
        for base in re.findall(r"_base_ = \[?'([^']+)'", text):
            outs += _header_outputs(osp.normpath(osp.join(osp.dirname(path), base)))
    return outs


def _check(name: str, data_root: str, prefix: str, k: int) -> Tuple[str, ...]:
    m = NAME.match(name)
    assert m, f'{name}: not data/<data set>/knn/<data_prefix>_<feature model>_k<K>.npz'
    assert f"data/{m['set']}" == data_root.rstrip('/'), (name, data_root)
    assert m['prefix'] == prefix and int(m['k']) == k, (name, prefix, k)
    return m['set'], m['model']


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.relpath(p, REPO))
def test_neighbour_files_follow_the_naming(path):
    parts = _neighbour_datasets(Config.fromfile(path))
    if not parts:
        assert 'synthetic' in path  # generated scenes have no neighbour files
        return
    names = set()
    for part in parts:
        _, model = _check(part.neighbors_file, part.data_root, part.data_prefix,
                          part.num_neighbors)
        assert model == RELEASED_FEATURES, part.neighbors_file
        names.add(part.neighbors_file)
    outs = _header_outputs(path)
    assert outs, f'{path}: no neighbour command in the header'
    for out in outs:  # the commands in the header write the files the config reads
        assert out in names, (out, names)


def test_all_configs_share_one_neighbour_file_per_data_set():
    seen = {}
    for path in CONFIGS:
        for part in _neighbour_datasets(Config.fromfile(path)):
            seen.setdefault(part.data_root, set()).add(part.neighbors_file)
    assert seen == {'data/coco': {'data/coco/knn/train2017_dino_vitb16_k7.npz'},
                    'data/imagenet': {'data/imagenet/knn/train_dino_vitb16_k7.npz'}}


def test_the_naming_check_refuses_other_names():
    with pytest.raises(AssertionError):
        _check('data/coco/knn/train2017_dino_vits16_k6.npz', 'data/coco', 'train2017', 7)
    with pytest.raises(AssertionError):
        _check('data/coco/train2017_knn.npz', 'data/coco', 'train2017', 7)
    with pytest.raises(AssertionError):
        _check('data/imagenet/knn/train2017_dino_vitb16_k7.npz', 'data/coco', 'train2017', 7)

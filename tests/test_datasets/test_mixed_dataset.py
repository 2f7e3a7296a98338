import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmpretrain.registry import DATASETS
from mmpretrain.structures import DataSample

import cotap_mm  # noqa: F401
from cotap_mm.datasets import MixedCOCOImageNet, PairedMixDataset, neighbor_collate
from cotap_mm.datasets.neighbors import write_neighbors
from cotap_test_helpers.tiny_runs import REPO_ROOT, write_image_folder

N_COCO, N_IN = 3, 7


def pack_path(results):
    return dict(inputs=[torch.zeros(3, 2, 2, dtype=torch.uint8)],
                data_samples=DataSample(metainfo=dict(img_path=results['img_path'],
                                                      sample_idx=results['sample_idx'])))


def _data(root, prefix, n):
    write_image_folder(osp.join(root, prefix), num=n, size=24)
    names = sorted(os.listdir(osp.join(root, prefix)))
    nb = np.array([[(i + 1) % n, (i + 2) % n] for i in range(n)])
    nn_file = write_neighbors(osp.join(root, 'knn.npz'), [f'{prefix}/{x}' for x in names], nb,
                              np.ones((n, 2), np.float32))
    return names, nb, nn_file


@pytest.fixture
def data(tmp_path):
    coco_root, in_root = str(tmp_path / 'coco'), str(tmp_path / 'imagenet')
    coco = _data(coco_root, 'train2017', N_COCO)
    imnet = _data(in_root, 'train', N_IN)

    def cfgs(neighbors: bool):
        # serialize_data=False: mmengine's serialisation runs gc.collect (slow in a big process)
        return (dict(type='COCOUnlabeled', data_root=coco_root, pipeline=[pack_path],
                     neighbors_file=coco[2] if neighbors else None, num_neighbors=None,
                     serialize_data=False),
                dict(type='ImageNetUnlabeled', data_root=in_root, pipeline=[pack_path],
                     neighbors_file=imnet[2] if neighbors else None, num_neighbors=None,
                     serialize_data=False))
    return dict(coco=coco, imnet=imnet, cfgs=cfgs)


def _idx(sample, names):
    return names.index(osp.basename(sample.img_path))


def test_indexing_without_neighbours(data):
    ds = DATASETS.build(dict(type='MixedCOCOImageNet', coco=data['cfgs'](False)[0],
                             imagenet=data['cfgs'](False)[1]))
    assert isinstance(ds, MixedCOCOImageNet)
    assert len(ds) == N_IN and len(ds.coco) == N_COCO and len(ds.imagenet) == N_IN
    assert ds.metainfo['sources'] == ('coco', 'imagenet')
    for i in range(N_IN):
        assert ds.source_indices(i) == [i % N_COCO, i]
        c, m = (x['data_samples'] for x in ds[i])
        assert (c.source, m.source) == ('coco', 'imagenet')
        assert _idx(c, data['coco'][0]) == i % N_COCO and c.sample_idx == i % N_COCO
        assert _idx(m, data['imnet'][0]) == i
    assert ds.source_indices(-1) == [(N_IN - 1) % N_COCO, N_IN - 1]
    with pytest.raises(IndexError, match='out of range'):
        ds[N_IN]


def test_indexing_with_neighbours_and_collate(data):
    coco_cfg, in_cfg = data['cfgs'](True)
    ds = MixedCOCOImageNet(coco=coco_cfg, imagenet=in_cfg)
    np.random.seed(0)
    for i in range(N_IN):
        group = [x['data_samples'] for x in ds[i]]
        assert [s.source for s in group] == ['coco', 'coco', 'imagenet', 'imagenet']
        assert [s.is_neighbor for s in group] == [False, True, False, True]
        cn, inn = data['coco'], data['imnet']
        assert _idx(group[0], cn[0]) == i % N_COCO and _idx(group[2], inn[0]) == i
        assert _idx(group[1], cn[0]) in cn[1][i % N_COCO]  # only listed neighbours
        assert _idx(group[3], inn[0]) in inn[1][i]
    batch = neighbor_collate([ds[0], ds[5]])
    samples = batch['data_samples']
    assert len(samples) == 8 and batch['inputs'][0].shape == (8, 3, 2, 2)
    assert [s.neighbor_index for s in samples] == [1, 0, 3, 2, 5, 4, 7, 6]
    assert [s.source for s in samples] == ['coco', 'coco', 'imagenet', 'imagenet'] * 2
    assert _idx(samples[4], data['coco'][0]) == 5 % N_COCO


def test_paired_mix_length_modes_and_errors(data):
    coco_cfg, in_cfg = data['cfgs'](False)
    assert len(PairedMixDataset([coco_cfg, in_cfg])) == N_IN
    assert len(PairedMixDataset([coco_cfg, in_cfg], length='min')) == N_COCO
    short = PairedMixDataset([in_cfg, coco_cfg], length=1)
    assert len(short) == N_COCO and short.source_indices(2) == [2, 2]
    assert [x['data_samples'].source for x in short[1]] == ['imagenet', 'coco']
    lazy = PairedMixDataset([coco_cfg, in_cfg], lazy_init=True)
    assert not lazy._fully_initialized  # like mmengine's ConcatDataset: only the wrapper's init
    assert len(lazy) == N_IN and lazy._fully_initialized
    for bad in ('first', 2, True):
        with pytest.raises(ValueError, match='length must be'):
            PairedMixDataset([coco_cfg, in_cfg], length=bad)
    with pytest.raises(ValueError, match='at least two'):
        PairedMixDataset([coco_cfg])
    with pytest.raises(TypeError, match=r'datasets\[1\]'):
        PairedMixDataset([coco_cfg, 3])


def test_coco_in1k_config():
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs/_base_/datasets/cotap_coco_in1k.py'))
    base = Config.fromfile(osp.join(REPO_ROOT, 'configs/_base_/datasets/cotap_coco.py'))
    loader = cfg.train_dataloader
    assert loader.batch_size == 28 and loader.collate_fn.type == 'neighbor_collate'
    ds = loader.dataset
    assert ds.type == 'MixedCOCOImageNet'
    assert ds.coco.type == 'COCOUnlabeled' and ds.imagenet.type == 'ImageNetUnlabeled'
    assert (ds.coco.data_root, ds.coco.data_prefix) == ('data/coco', 'train2017')
    assert (ds.imagenet.data_root, ds.imagenet.data_prefix) == ('data/imagenet', 'train')
    assert ds.coco.neighbors_file.startswith('data/coco/')
    assert ds.imagenet.neighbors_file.startswith('data/imagenet/')
    assert ds.coco.pipeline == base.train_pipeline == ds.imagenet.pipeline
    assert DATASETS.get(ds.type) is MixedCOCOImageNet

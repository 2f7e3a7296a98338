import functools
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmpretrain.registry import DATASETS
from mmpretrain.structures import DataSample

import cotap_mm  # noqa: F401
from cotap_mm.datasets import COCOUnlabeled, ImageNetUnlabeled
from cotap_mm.datasets.neighbors import write_neighbors
from cotap_test_helpers.tiny_runs import REPO_ROOT, write_image_folder

N = 6
# serialize_data=False: mmengine's serialisation runs gc.collect, slow in a big test process (the
# runner test below keeps the default); num_neighbors=None: draw among all columns of the small
# test files (the released default, 7 columns, is tested in test_released_columns_and_self)
COCO = functools.partial(COCOUnlabeled, serialize_data=False, num_neighbors=None)


def pack_path(results):
    """Cheapest packing: no pixels, just where the item came from."""
    return dict(inputs=[torch.zeros(3, 2, 2, dtype=torch.uint8)],
                data_samples=DataSample(metainfo=dict(img_path=results['img_path'],
                                                      sample_idx=results['sample_idx'])))


@pytest.fixture
def coco(tmp_path):
    """data/coco/train2017 with N images and a neighbour file (3 neighbours, paths vs data root)."""
    root = str(tmp_path / 'coco')
    write_image_folder(osp.join(root, 'train2017'), num=N, size=40)
    names = sorted(os.listdir(osp.join(root, 'train2017')))
    keys = [f'train2017/{n}' for n in names]
    nb = np.array([[(i + 1) % N, (i + 3) % N, (i + 4) % N] for i in range(N)])
    sim = np.tile(np.array([[0.9, 0.8, 0.7]], np.float32), (N, 1))
    nn_file = write_neighbors(osp.join(root, 'knn.npz'), keys, nb, sim)
    return dict(root=root, names=names, nb=nb, nn_file=nn_file)


def test_folder_without_neighbours(coco):
    ds = COCO(data_root=coco['root'], pipeline=[pack_path])
    assert len(ds) == N and ds.source_name == 'coco' and not ds.with_neighbors
    assert [osp.basename(ds.get_data_info(i)['img_path']) for i in range(N)] == coco['names']
    item = ds[2]
    assert isinstance(item, dict)
    s = item['data_samples']
    assert s.source == 'coco' and s.is_neighbor is False
    assert s.img_path == osp.join(coco['root'], 'train2017', coco['names'][2])
    assert 'gt_label' not in ds.get_data_info(0)


def test_neighbour_sampling_only_listed_and_uniform(coco):
    ds = COCO(data_root=coco['root'], neighbors_file=coco['nn_file'],
                       pipeline=[pack_path])
    assert ds.with_neighbors and ds.neighbor_indices.shape == (N, 3)
    np.random.seed(0)
    for i in range(N):
        seen = []
        for _ in range(60):
            item = ds[i]
            assert isinstance(item, list) and len(item) == 2
            anchor, nbr = (x['data_samples'] for x in item)
            assert anchor.sample_idx == i and anchor.is_neighbor is False
            assert nbr.is_neighbor is True and nbr.source == anchor.source == 'coco'
            assert osp.basename(anchor.img_path) == coco['names'][i]
            seen.append(coco['names'].index(osp.basename(nbr.img_path)))
            assert nbr.sample_idx == seen[-1]
        assert set(seen) == set(coco['nb'][i].tolist())  # only listed ones, all of them
        assert min(np.bincount(seen)[coco['nb'][i]]) >= 8  # ~uniform (20 expected)


def _partner_counts(ds, i, draws=700):
    """How often each dataset index was drawn as the partner of image ``i``."""
    names = [osp.basename(ds.get_data_info(j)['img_path']) for j in range(len(ds))]
    counts = np.zeros(len(ds), int)
    for _ in range(draws):
        counts[names.index(osp.basename(ds[i][1]['data_samples'].img_path))] += 1
    return counts


def test_released_columns_and_self(tmp_path):
    """Released: uniform over columns 0-6 of a STEGO-layout row, column 0 the image itself."""
    n, k = 10, 9
    root = str(tmp_path / 'coco')
    write_image_folder(osp.join(root, 'train2017'), num=n, size=24)
    keys = [f'train2017/{x}' for x in sorted(os.listdir(osp.join(root, 'train2017')))]
    nb = np.array([[i] + [(i + j) % n for j in range(1, k)] for i in range(n)])
    sim = np.tile(np.linspace(1.0, 0.2, k, dtype=np.float32), (n, 1))
    with_self = write_neighbors(str(tmp_path / 'self.npz'), keys, nb, sim,
                                meta=dict(includes_self=True))
    ds = COCOUnlabeled(data_root=root, neighbors_file=with_self, pipeline=[pack_path],
                       serialize_data=False)  # defaults: num_neighbors=7, exclude_self=False
    assert ds.num_neighbors == 7 and ds.exclude_self is False
    np.testing.assert_array_equal(ds.neighbor_indices, nb[:, :7])
    np.random.seed(0)
    counts = _partner_counts(ds, 4)
    assert set(np.nonzero(counts)[0]) == set(nb[4, :7].tolist())  # columns 0-6, itself included
    assert counts[4] >= 60 and counts.max() <= 150  # ~1/7 each (100 expected)
    # option: never the image itself -> columns 1-7
    ds = COCOUnlabeled(data_root=root, neighbors_file=with_self, pipeline=[pack_path],
                       serialize_data=False, exclude_self=True)
    np.testing.assert_array_equal(ds.neighbor_indices, nb[:, 1:8])
    assert set(np.nonzero(_partner_counts(ds, 4, 200))[0]) == set(nb[4, 1:8].tolist())
    # a file without the self column: exclude_self changes nothing
    no_self = write_neighbors(str(tmp_path / 'noself.npz'), keys, nb[:, 1:], sim[:, 1:])
    for exclude in (False, True):
        ds = COCOUnlabeled(data_root=root, neighbors_file=no_self, pipeline=[pack_path],
                           serialize_data=False, exclude_self=exclude)
        np.testing.assert_array_equal(ds.neighbor_indices, nb[:, 1:8])
    # too few columns, bad values: errors naming the file / value
    with pytest.raises(ValueError, match=r'self.npz: num_neighbors=9 needs at least 9 columns, '
                                         r'the file has 8 after dropping the self column'):
        COCOUnlabeled(data_root=root, neighbors_file=with_self, num_neighbors=9,
                      exclude_self=True, serialize_data=False)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match='num_neighbors must be a positive int'):
            COCOUnlabeled(data_root=root, neighbors_file=with_self, num_neighbors=bad)
    with pytest.raises(TypeError, match='exclude_self must be a bool'):
        COCOUnlabeled(data_root=root, neighbors_file=with_self, exclude_self='yes')


def test_ann_files_and_subsets(coco, tmp_path):
    names = coco['names']
    txt = tmp_path / 'list.txt'
    txt.write_text(f'{names[4]}\n{names[1]} 7\n\n')  # a trailing label column is dropped
    ds = COCO(data_root=coco['root'], ann_file=str(txt), pipeline=[pack_path])
    assert [osp.basename(ds.get_data_info(i)['img_path']) for i in range(2)] == [names[4], names[1]]
    js = tmp_path / 'instances.json'
    js.write_text(json.dumps(dict(images=[dict(id=3, file_name=names[3]),
                                          dict(id=0, file_name=names[0])],
                                  annotations=[], categories=[])))
    ds = COCO(data_root=coco['root'], ann_file=str(js), pipeline=[pack_path])
    assert [osp.basename(ds.get_data_info(i)['img_path']) for i in range(2)] == [names[3], names[0]]
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps(dict(annotations=[])))
    with pytest.raises(ValueError, match='bad.json'):
        COCO(data_root=coco['root'], ann_file=str(bad))
    # subset of the neighbour file: strict refuses, non-strict keeps the neighbours inside
    subset = tmp_path / 'subset.txt'
    subset.write_text('\n'.join(names[:4]))
    with pytest.raises(ValueError, match='knn.npz'):
        COCO(data_root=coco['root'], ann_file=str(subset),
                      neighbors_file=coco['nn_file'])
    ds = COCO(data_root=coco['root'], ann_file=str(subset),
                       neighbors_file=coco['nn_file'], strict_neighbors=False,
                       pipeline=[pack_path])
    np.random.seed(1)
    for i in range(4):
        allowed = {n for n in coco['nb'][i] if n < 4}
        got = {names.index(osp.basename(ds[i][1]['data_samples'].img_path)) for _ in range(20)}
        assert got <= allowed and got


def test_neighbour_file_must_cover_the_dataset(coco, tmp_path):
    keys = [f'other/{n}' for n in coco['names']]
    wrong = write_neighbors(str(tmp_path / 'wrong.npz'), keys, coco['nb'],
                            np.zeros((N, 3), np.float32))
    with pytest.raises(KeyError, match='wrong.npz'):
        COCO(data_root=coco['root'], neighbors_file=wrong)
    with pytest.raises(FileNotFoundError, match='missing.npz'):
        COCO(data_root=coco['root'], neighbors_file=str(tmp_path / 'missing.npz'))
    ds = COCO(data_root=coco['root'], pipeline=[lambda r: r])  # unpacked output
    with pytest.raises(TypeError, match='packing transform'):
        ds[0]


def test_imagenet_layout(tmp_path):
    root = str(tmp_path / 'imagenet')
    for wnid in ('n01', 'n02'):
        write_image_folder(osp.join(root, 'train', wnid), num=2, size=36)
        for i in range(2):
            os.rename(osp.join(root, 'train', wnid, f'img_{i:03d}.png'),
                      osp.join(root, 'train', wnid, f'{wnid}_{i}.JPEG'))
    open(osp.join(root, 'train', 'n01', 'notes.txt'), 'w').close()
    keys = [f'train/{w}/{w}_{i}.JPEG' for w in ('n01', 'n02') for i in range(2)]
    nn_file = write_neighbors(osp.join(root, 'knn.json'), keys, np.array([[1], [2], [3], [0]]),
                              np.ones((4, 1)))
    ds = ImageNetUnlabeled(data_root=root, neighbors_file=nn_file, pipeline=[pack_path],
                           serialize_data=False, num_neighbors=1)
    assert len(ds) == 4 and ds.source_name == 'imagenet'
    item = ds[1]
    assert [x['data_samples'].source for x in item] == ['imagenet', 'imagenet']
    assert item[1]['data_samples'].img_path.endswith('n02/n02_0.JPEG')
    assert DATASETS.get('ImageNetUnlabeled') is ImageNetUnlabeled


def _tiny_view_pipeline():
    """The real CoTAP view pipeline of configs/_base_/datasets/cotap_coco.py at small sizes."""
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs/_base_/datasets/cotap_coco.py'))
    pipeline = cfg.train_pipeline
    assert [t['type'] for t in pipeline] == ['LoadImageFromFile', 'GeometricMultiView',
                                             'PackGeometricViews']
    pipeline[1].update(global_size=32, local_size=16)
    return pipeline


def test_real_view_pipeline_and_collate_through_the_runner(coco):
    pipeline = _tiny_view_pipeline()
    with DefaultScope.overwrite_default_scope('mmpretrain'):  # as default_runtime.py sets
        loader = Runner.build_dataloader(
            dict(batch_size=3, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
                 collate_fn=dict(type='neighbor_collate'),
                 dataset=dict(type='COCOUnlabeled', data_root=coco['root'],
                              neighbors_file=coco['nn_file'], num_neighbors=3,
                              pipeline=pipeline)), seed=0)
        batch = next(iter(loader))
    inputs, samples = batch['inputs'], batch['data_samples']
    # 2 global + 4 local student views, then 2 teacher views; 3 anchors + 3 neighbours
    assert len(inputs) == 8 and len(samples) == 6
    for v, t in enumerate(inputs):
        size = 16 if 2 <= v < 6 else 32
        assert t.shape == (6, 3, size, size) and t.dtype == torch.uint8
    assert [s.neighbor_index for s in samples] == [1, 0, 3, 2, 5, 4]
    assert [s.is_neighbor for s in samples] == [False, True] * 3
    assert all(s.source == 'coco' for s in samples)
    assert [s.sample_idx for s in samples[::2]] == [0, 1, 2]
    for a in range(3):
        assert samples[2 * a + 1].sample_idx in coco['nb'][a]
        assert samples[2 * a].crop_boxes.shape == (6, 4)


def test_coco_nn_config():
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs/_base_/datasets/cotap_coco_nn.py'))
    base = Config.fromfile(osp.join(REPO_ROOT, 'configs/_base_/datasets/cotap_coco.py'))
    loader = cfg.train_dataloader
    assert loader.collate_fn.type == 'neighbor_collate' and loader.batch_size == 28
    ds = loader.dataset
    assert ds.type == 'COCOUnlabeled' and ds.neighbors_file.endswith('.npz')
    assert ds.data_root == 'data/coco' and ds.data_prefix == 'train2017'
    assert ds.pipeline == base.train_pipeline and 'with_label' not in ds


LOAD_AND_PACK = [dict(type='LoadImageFromFile'), pack_path]  # real image loading, cheap packing


def _break_images(root):
    """An empty file and an HTML page saved as an image, among the good ones."""
    folder = osp.join(root, 'train2017')
    names = sorted(os.listdir(folder))
    open(osp.join(folder, names[1]), 'wb').close()
    with open(osp.join(folder, names[2]), 'wb') as f:
        f.write(b'<html>404</html>')
    return [osp.join(folder, n) for n in names[1:3]]


def test_unreadable_image_error_names_the_file(coco):
    empty, html = _break_images(coco['root'])
    ds = COCO(data_root=coco['root'], pipeline=LOAD_AND_PACK)
    with pytest.raises(OSError, match=f'cannot read image {empty}: empty file') as err:
        ds[1]
    assert type(err.value).__name__ == 'BadImageError'
    with pytest.raises(OSError, match=f'cannot read image {html}'):
        ds[2]
    # through dataloader worker processes too
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, collate_fn=list)
    with pytest.raises(Exception, match=f'cannot read image {empty}'):
        list(loader)


def test_skip_bad_images_logs_each_file_once_and_replaces_the_sample(coco, tmp_path):
    from mmengine.logging import MMLogger
    empty, html = _break_images(coco['root'])
    log = tmp_path / 'skip.log'
    MMLogger.get_instance('skip_bad_images_test', log_file=str(log))
    ds = COCO(data_root=coco['root'], pipeline=LOAD_AND_PACK, skip_bad_images=True)
    for _ in range(2):  # two epochs: each bad file is reported once
        paths = [ds[i]['data_samples'].img_path for i in range(N)]
    names = coco['names']
    good = osp.join(coco['root'], 'train2017', names[3])
    assert paths[1] == paths[2] == good  # replaced by the next readable sample
    assert ds.num_bad_images == 2
    text = log.read_text()
    assert text.count(empty) == 1 and text.count(html) == 2  # the loader's own message names it too
    assert '2 bad image file(s) skipped so far' in text

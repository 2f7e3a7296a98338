import json
import os.path as osp

import numpy as np
import pytest
import torch

from cotap_mm.datasets.neighbors import (NeighborTable, knn_cosine, knn_cosine_self_first,
                                         neighbor_candidates, neighbor_index_table,
                                         read_neighbors, relative_key, sample_neighbor,
                                         write_neighbors)


def brute_force_knn(feats: np.ndarray, k: int, exclude_self: bool = True):
    """Reference: a Python loop over queries, float64 cosine, stable sort."""
    feats = np.asarray(feats, dtype=np.float64)
    norms = np.linalg.norm(feats, axis=1)
    idx, sims = [], []
    for i in range(len(feats)):
        cands = []
        for j in range(len(feats)):
            if exclude_self and j == i:
                continue
            cands.append((float(feats[i] @ feats[j] / (norms[i] * norms[j])), j))
        cands.sort(key=lambda t: -t[0])
        idx.append([j for _, j in cands[:k]])
        sims.append([s for s, _ in cands[:k]])
    return np.asarray(idx), np.asarray(sims)


def _table(n=6, k=2):
    paths = [f'train2017/{i:012d}.jpg' for i in range(n)]
    nb = np.stack([(np.arange(n) + 1) % n, (np.arange(n) + 2) % n], 1)[:, :k]
    sim = np.linspace(0.9, 0.1, n * k, dtype=np.float32).reshape(n, k)
    sim = -np.sort(-sim, axis=1)
    return paths, nb, sim


# ----------------------------------------------------------------------------- kNN


@pytest.mark.parametrize('k', [1, 3, 19])
def test_knn_matches_brute_force(k):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(20, 8)) * rng.uniform(0.5, 3, size=(20, 1))  # norms differ
    ref_idx, ref_sim = brute_force_knn(feats, k)
    idx, sim = knn_cosine(torch.from_numpy(feats).float(), k)
    assert idx.dtype == torch.long and sim.dtype == torch.float32
    assert idx.shape == (20, k) and sim.shape == (20, k)
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    np.testing.assert_allclose(sim.numpy(), ref_sim, atol=1e-5)
    assert not (idx == torch.arange(20)[:, None]).any()


def test_knn_chunked_equals_full_and_query_subsets():
    rng = np.random.default_rng(1)
    feats = torch.from_numpy(rng.normal(size=(53, 16))).float()
    full_idx, full_sim = knn_cosine(feats, 7, query_chunk=1000, key_chunk=1000)
    for qc, kc in ((1, 1), (7, 5), (16, 53), (53, 8)):
        idx, sim = knn_cosine(feats, 7, query_chunk=qc, key_chunk=kc)
        torch.testing.assert_close(idx, full_idx, rtol=0, atol=0)
        torch.testing.assert_close(sim, full_sim)
    idx, sim = knn_cosine(feats, 7, queries=slice(10, 30), query_chunk=3, key_chunk=4)
    torch.testing.assert_close(idx, full_idx[10:30], rtol=0, atol=0)
    idx, _ = knn_cosine(feats, 7, queries=torch.tensor([52, 0, 5]), key_chunk=6)
    torch.testing.assert_close(idx, full_idx[[52, 0, 5]], rtol=0, atol=0)


def test_knn_duplicates_and_exclude_self():
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(10, 4))
    feats[7] = 3.0 * feats[2]  # same direction: cosine 1
    idx, sim = knn_cosine(torch.from_numpy(feats).float(), 2, key_chunk=3)
    assert idx[2, 0] == 7 and idx[7, 0] == 2
    assert sim[2, 0] == pytest.approx(1.0, abs=1e-5)
    idx, sim = knn_cosine(torch.from_numpy(feats).float(), 2, exclude_self=False)
    assert set(idx[2].tolist()) == {2, 7}
    idx, sim = knn_cosine(torch.from_numpy(feats).float(), 10, exclude_self=False, key_chunk=4)
    assert (idx.sort(1).values == torch.arange(10)).all()  # every row is a permutation
    assert (sim[:, :-1] >= sim[:, 1:]).all()


def test_knn_bad_input():
    feats = torch.randn(5, 3)
    for k in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match='k must be'):
            knn_cosine(feats, k)
    with pytest.raises(ValueError, match=r'\[N, D\]'):
        knn_cosine(torch.randn(5), 2)
    with pytest.raises(ValueError, match='query_chunk'):
        knn_cosine(feats, 2, query_chunk=0)
    with pytest.raises(ValueError, match='queries'):
        knn_cosine(feats, 2, queries=torch.tensor([5]))


def test_knn_self_first_is_stego_layout():
    """Column 0 the query itself (similarity 1), then the brute-force k - 1 nearest others; exact
    duplicates (also cosine 1) never take column 0; a zero feature gets self-similarity 0."""
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(12, 5))
    feats[9] = 2.0 * feats[4]  # cosine 1 with image 4
    ref_idx, ref_sim = brute_force_knn(feats, 3)
    idx, sim = knn_cosine_self_first(torch.from_numpy(feats).float(), 4, key_chunk=5)
    assert idx.shape == (12, 4) and sim.dtype == torch.float32
    np.testing.assert_array_equal(idx[:, 0].numpy(), np.arange(12))
    np.testing.assert_allclose(sim[:, 0].numpy(), 1.0, atol=1e-6)
    same = {9: 4}  # the duplicate pair ties with every query: compare up to the copy
    canon = lambda a: np.vectorize(lambda j: same.get(int(j), int(j)))(a)  # noqa: E731
    np.testing.assert_array_equal(canon(idx[:, 1:].numpy()), canon(ref_idx))
    np.testing.assert_allclose(sim[:, 1:].numpy(), ref_sim, atol=1e-5)
    assert idx[4, 1] == 9 and idx[9, 1] == 4
    sub_idx, sub_sim = knn_cosine_self_first(torch.from_numpy(feats).float(), 4,
                                             queries=slice(3, 7))
    torch.testing.assert_close(sub_idx, idx[3:7], rtol=0, atol=0)
    torch.testing.assert_close(sub_sim, sim[3:7])
    feats[11] = 0.0
    idx, sim = knn_cosine_self_first(torch.from_numpy(feats).float(), 2)
    assert idx[11, 0] == 11 and sim[11, 0] == 0
    for k in (1, 13, 2.0):
        with pytest.raises(ValueError, match=r'k must be an int in \[2, 12\]'):
            knn_cosine_self_first(torch.from_numpy(feats).float(), k)


# ----------------------------------------------------------------------------- file


@pytest.mark.parametrize('suffix', ['.npz', '.json'])
def test_neighbor_file_round_trip(tmp_path, suffix):
    paths, nb, sim = _table()
    out = str(tmp_path / 'sub' / f'nn{suffix}')
    meta = dict(config='x.py', k=2, img_size=224)
    assert write_neighbors(out, paths, torch.from_numpy(nb), torch.from_numpy(sim), meta) == out
    table = read_neighbors(out)
    assert table.img_paths == paths and len(table) == 6 and table.k == 2
    np.testing.assert_array_equal(table.neighbors, nb)
    assert table.neighbors.dtype == np.int64 and table.similarities.dtype == np.float32
    np.testing.assert_allclose(table.similarities, sim, rtol=1e-6)
    assert table.meta == meta
    assert not any(p.endswith('.tmp' + suffix) for p in map(str, tmp_path.rglob('*')))
    if suffix == '.npz':  # loads without pickle
        with np.load(out, allow_pickle=False) as data:
            assert set(data.files) == {'img_paths', 'neighbors', 'similarities', 'meta'}


def _write_raw_npz(path, **arrays):
    with open(path, 'wb') as f:
        np.savez(f, **arrays)
    return str(path)


def test_read_errors_name_the_file(tmp_path):
    paths, nb, sim = _table()
    p = np.asarray(paths)
    cases = {
        'missing key': (_write_raw_npz(tmp_path / 'a.npz', img_paths=p, neighbors=nb),
                        'missing key'),
        'out of range': (_write_raw_npz(tmp_path / 'b.npz', img_paths=p, neighbors=nb + 6,
                                        similarities=sim), r'indices in \[0, 6\)'),
        'self': (_write_raw_npz(tmp_path / 'c.npz', img_paths=p,
                                neighbors=np.stack([np.arange(6), nb[:, 1]], 1),
                                similarities=sim), 'lists itself'),
        'sim shape': (_write_raw_npz(tmp_path / 'd.npz', img_paths=p, neighbors=nb,
                                     similarities=sim[:, :1]), 'shape of neighbors'),
        'rows': (_write_raw_npz(tmp_path / 'e.npz', img_paths=p[:5], neighbors=nb,
                                similarities=sim), r'\[N, k\] with N=5'),
        'float idx': (_write_raw_npz(tmp_path / 'f.npz', img_paths=p, neighbors=nb * 1.0,
                                     similarities=sim), 'integers'),
        'dup paths': (_write_raw_npz(tmp_path / 'g.npz', img_paths=np.asarray([paths[0]] * 6),
                                     neighbors=nb, similarities=sim), 'unique'),
        'nan': (_write_raw_npz(tmp_path / 'h.npz', img_paths=p, neighbors=nb,
                               similarities=sim * np.nan), 'finite'),
        'pickled': (_write_raw_npz(tmp_path / 'i.npz', img_paths=np.asarray(paths, dtype=object),
                                   neighbors=nb, similarities=sim), 'could not be read'),
    }
    for name, (path, msg) in cases.items():
        with pytest.raises(ValueError, match=msg) as e:
            read_neighbors(path)
        assert path in str(e.value), name
    corrupt = tmp_path / 'corrupt.npz'
    corrupt.write_bytes(b'not a zip file')
    with pytest.raises(ValueError, match='could not be read') as e:
        read_neighbors(str(corrupt))
    assert str(corrupt) in str(e.value)
    bad_json = tmp_path / 'bad.json'
    bad_json.write_text(json.dumps(dict(img_paths=paths, neighbors=[[1, 2]] * 5 + [[1]],
                                        similarities=sim.tolist())))
    with pytest.raises(ValueError) as e:
        read_neighbors(str(bad_json))
    assert str(bad_json) in str(e.value)
    with pytest.raises(FileNotFoundError, match='nope.npz'):
        read_neighbors(str(tmp_path / 'nope.npz'))
    with pytest.raises(ValueError, match='suffix'):
        read_neighbors(str(tmp_path / 'x.pkl'))
    with pytest.raises(ValueError, match='lists itself'):  # write validates too
        write_neighbors(str(tmp_path / 'w.npz'), paths, np.zeros((6, 2), int), sim)
    assert not osp.exists(tmp_path / 'w.npz')


def test_self_column_only_when_meta_says_so(tmp_path):
    """meta includes_self: column 0 must be the image, no other column may be; without it, no
    column may be the image."""
    paths, nb, sim = _table(n=6, k=2)
    with_self = np.concatenate([np.arange(6)[:, None], nb], 1)
    sim3 = np.concatenate([np.ones((6, 1), np.float32), sim], 1)
    out = write_neighbors(str(tmp_path / 's.json'), paths, with_self, sim3,
                          meta=dict(includes_self=True, feature='patch-mean'))
    table = read_neighbors(out)
    assert table.includes_self and table.k == 3
    np.testing.assert_array_equal(table.neighbors, with_self)
    assert not NeighborTable(paths, nb, sim).includes_self
    cases = {
        'no meta': (with_self, None, 'lists itself as a neighbour'),
        'meta false': (with_self, dict(includes_self=False), 'lists itself as a neighbour'),
        'column 0 not self': (np.concatenate([nb[:, :1], with_self[:, :2]], 1),
                              dict(includes_self=True), 'column 0 of row 0'),
        'self twice': (np.concatenate([with_self[:, :2], np.arange(6)[:, None]], 1),
                       dict(includes_self=True), 'in a column other than 0'),
        'only self': (with_self[:, :1], dict(includes_self=True), 'k must be >= 2'),
        'not a bool': (with_self, dict(includes_self='yes'), "includes_self'] must be true"),
    }
    for name, (table_nb, meta, msg) in cases.items():
        path = str(tmp_path / f'{name.replace(" ", "_")}.npz')
        with pytest.raises(ValueError, match=msg) as e:
            write_neighbors(path, paths, table_nb, sim3[:, :table_nb.shape[1]], meta)
        assert path in str(e.value), name
        assert not osp.exists(path)


def test_neighbor_candidates_columns_and_self():
    rows = np.array([[0, 3, 1, 2], [1, 0, -1, 2], [2, -1, -1, 0]])
    np.testing.assert_array_equal(neighbor_candidates(rows, 3, includes_self=True), rows[:, :3])
    np.testing.assert_array_equal(
        neighbor_candidates(rows, 3, includes_self=True, exclude_self=True), rows[:, 1:])
    np.testing.assert_array_equal(neighbor_candidates(rows, None, includes_self=True), rows)
    # a table without a self column: exclude_self drops nothing
    np.testing.assert_array_equal(neighbor_candidates(rows, 2, exclude_self=True), rows[:, :2])
    with pytest.raises(ValueError, match=r'x.npz: num_neighbors=4 needs at least 4 columns, the '
                                         r'file has 3 after dropping the self column'):
        neighbor_candidates(rows, 4, includes_self=True, exclude_self=True, path='x.npz')
    with pytest.raises(ValueError, match='dataset image 2 has no candidate left in the 2 '):
        neighbor_candidates(rows, 2, includes_self=True, exclude_self=True, path='x.npz')
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match='num_neighbors must be a positive int'):
            neighbor_candidates(rows, bad)


# ----------------------------------------------------------------------------- mapping / sampling


def test_relative_key():
    assert relative_key('data/coco/train2017/a.jpg', 'data/coco') == 'train2017/a.jpg'
    assert relative_key('data/coco/train2017/a.jpg', 'data/coco/') == 'train2017/a.jpg'
    assert relative_key(osp.abspath('data/coco/x/a.jpg'), 'data/coco') == 'x/a.jpg'
    assert relative_key('./x//a.jpg') == 'x/a.jpg'


def test_neighbor_index_table_maps_to_dataset_order():
    paths, nb, sim = _table()
    table = NeighborTable(paths, nb, sim)
    order = [3, 0, 5, 1, 4, 2]  # dataset order differs from the file's
    keys = [paths[r] for r in order]
    out = neighbor_index_table(table, keys)
    assert out.shape == (6, 2)
    for i, r in enumerate(order):  # neighbour names agree
        assert [keys[j] for j in out[i]] == [paths[c] for c in nb[r]]
    # subset: neighbours outside the data set
    sub = keys[:4]
    with pytest.raises(ValueError, match='not in the dataset') as e:
        neighbor_index_table(table, sub, path='my.npz')
    assert 'my.npz' in str(e.value)
    out = neighbor_index_table(table, sub, strict=False)
    for i, key in enumerate(sub):
        expect = [sub.index(paths[c]) if paths[c] in sub else -1 for c in nb[paths.index(key)]]
        assert out[i].tolist() == expect
    assert (out == -1).any()
    with pytest.raises(ValueError, match='none of the neighbours'):
        neighbor_index_table(table, [paths[0], paths[3]], strict=False)
    with pytest.raises(KeyError, match='other.jpg'):
        neighbor_index_table(table, keys + ['train2017/other.jpg'], path='my.npz')


def test_sample_neighbor_only_listed():
    row = np.array([4, -1, 9, 2])
    for rng in (np.random.default_rng(0), np.random.RandomState(0)):
        draws = [sample_neighbor(row, rng) for _ in range(300)]
        assert set(draws) == {4, 9, 2}
        counts = np.bincount(draws, minlength=10)[[2, 4, 9]]
        assert counts.min() > 60  # roughly uniform (expected 100 each)
    with pytest.raises(ValueError, match='no valid neighbour'):
        sample_neighbor(np.array([-1, -1]))

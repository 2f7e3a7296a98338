import itertools

import numpy as np
import pytest
import torch

from cotap_mm.evaluation.overclustering import (assign_to_centroids, cluster_class_counts,
                                                hungarian_mapping, kmeans, majority_mapping,
                                                overclustering_eval, upsample_label_map)


def _np_lloyd(x, cent, iters):
    """Independent reference: textbook Lloyd in numpy (float64, loops over clusters)."""
    x = x.astype(np.float64)
    cent = cent.astype(np.float64).copy()
    for _ in range(iters):
        d = ((x[:, None, :] - cent[None]) ** 2).sum(-1)
        a = d.argmin(1)
        new = cent.copy()
        for k in range(cent.shape[0]):
            if (a == k).any():
                new[k] = x[a == k].mean(0)
        if np.allclose(new, cent):
            break
        cent = new
    d = ((x[:, None, :] - cent[None]) ** 2).sum(-1)
    return cent, d.argmin(1)


def _blobs(seed=0, k=4, per=25, d=5, spread=0.05):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    x = np.concatenate([c + spread * rng.normal(size=(per, d)) for c in centres])
    y = np.repeat(np.arange(k), per)
    return x.astype(np.float32), y


# ----------------------------------------------------------------------------- k-means


def test_kmeans_matches_numpy_lloyd_from_given_init_and_chunking():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    init = x[[0, 7, 21, 40]].copy()
    ref_c, ref_a = _np_lloyd(x, init, 50)
    for chunk in (7, 1000):
        res = kmeans(torch.from_numpy(x), 4, iters=50, init=torch.from_numpy(init),
                     chunk_size=chunk)
        np.testing.assert_allclose(res['centroids'].numpy(), ref_c, atol=1e-5)
        np.testing.assert_array_equal(res['assignments'].numpy(), ref_a)
        ref_inertia = ((x - ref_c[ref_a]) ** 2).sum()
        assert res['inertia'] == pytest.approx(ref_inertia, rel=1e-4)


@pytest.mark.parametrize('init', ['k-means++', 'random'])
def test_kmeans_recovers_separated_blobs_and_is_a_fixed_point(init):
    x, y = _blobs()
    res = kmeans(x, 4, seed=3, init=init, n_init=3)
    a = res['assignments'].numpy()
    # the same partition as the blobs (up to renaming)
    pairs = {(int(c), int(t)) for c, t in zip(a, y)}
    assert len(pairs) == 4 and len({p[0] for p in pairs}) == 4
    # fixed point: every centroid is the mean of its points, every point is nearest its centroid
    c = res['centroids'].numpy()
    for k in range(4):
        np.testing.assert_allclose(c[k], x[a == k].mean(0), atol=1e-5)
    d = ((x[:, None] - c[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(d.argmin(1), a)


def test_kmeans_seeded_and_deterministic():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(80, 4)).astype(np.float32))
    r1 = kmeans(x, 6, seed=5, chunk_size=9)
    r2 = kmeans(x, 6, seed=5, chunk_size=1000)
    assert torch.equal(r1['assignments'], r2['assignments'])
    torch.testing.assert_close(r1['centroids'], r2['centroids'])
    # random restarts keep the best run: never worse than the first seed's single run
    best = kmeans(x, 6, seed=5, n_init=4)
    assert best['inertia'] <= r1['inertia'] + 1e-6


def test_kmeans_refills_empty_clusters():
    # 3 distinct points, duplicated; a bad init puts two centroids on the same point
    x = torch.tensor([[0., 0.], [0., 0.], [10., 0.], [10., 0.], [0., 10.], [0., 10.]])
    init = torch.tensor([[0., 0.], [0., 0.], [10., 0.]])
    res = kmeans(x, 3, init=init, iters=10)
    assert sorted(torch.bincount(res['assignments'], minlength=3).tolist()) == [2, 2, 2]
    assert res['inertia'] == pytest.approx(0.0)


def test_assign_ties_and_errors():
    a, d = assign_to_centroids(torch.tensor([[1., 0.]]), torch.tensor([[0., 0.], [2., 0.]]))
    assert a.tolist() == [0] and d.tolist() == [1.0]  # tie -> lowest index
    with pytest.raises(ValueError, match='at least num_clusters=5'):
        kmeans(torch.zeros(4, 2), 5)
    with pytest.raises(ValueError, match=r'\[N, D\]'):
        kmeans(torch.zeros(4), 2)
    with pytest.raises(ValueError, match='init must be one of'):
        kmeans(torch.zeros(4, 2), 2, init='bogus')
    with pytest.raises(ValueError, match='init centroids must be'):
        kmeans(torch.zeros(4, 2), 2, init=torch.zeros(3, 2))


# ----------------------------------------------------------------------------- matching


def test_counts_and_mappings_hand_case():
    clusters = np.array([[0, 0, 1], [2, 2, 1]])
    labels = np.array([[1, 1, 0], [1, 255, 0]])
    counts = cluster_class_counts(clusters, labels, num_clusters=3, num_classes=2)
    # cluster 0: two pixels of class 1; cluster 1: two of class 0; cluster 2: one of class 1
    np.testing.assert_array_equal(counts.numpy(), [[0, 2], [2, 0], [0, 1]])
    assert majority_mapping(counts).tolist() == [1, 0, 1]
    assert majority_mapping(torch.tensor([[0, 0], [3, 3]])).tolist() == [-1, 0]  # empty; tie
    # Hungarian: greedy would give cluster 0 -> class 0 (5) and leave 1 -> 1 (0): total 5;
    # the optimum is 0 -> 1, 1 -> 0: 4 + 4 = 8
    assert hungarian_mapping(torch.tensor([[5, 4], [4, 0]])).tolist() == [1, 0]
    with pytest.raises(ValueError, match='as many clusters as classes'):
        hungarian_mapping(counts)
    with pytest.raises(ValueError, match=r'labels must be in \[0, 2\)'):
        cluster_class_counts(clusters, np.full((2, 3), 2), 3, 2)


def test_hungarian_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(5):
        c = rng.integers(0, 50, size=(5, 5))
        best = max(itertools.permutations(range(5)),
                   key=lambda p: sum(c[k, p[k]] for k in range(5)))
        got = hungarian_mapping(torch.from_numpy(c)).tolist()
        assert sum(c[k, got[k]] for k in range(5)) == sum(c[k, best[k]] for k in range(5))
        assert sorted(got) == list(range(5))


# ----------------------------------------------------------------------------- protocol


def test_upsample_label_map_nearest():
    m = torch.tensor([[[0, 1], [2, 3]]])
    up = upsample_label_map(m, (4, 4))
    np.testing.assert_array_equal(up[0].numpy(), np.kron(m[0].numpy(), np.ones((2, 2), int)))


def test_overclustering_hand_case_at_label_resolution():
    # one image, 2x2 patches upsampled to a 4x4 label map; features: patch class as one-hot
    # (clusters = the two feature values), labels disagree with the patch class on 3 pixels.
    feats = torch.zeros(1, 2, 2, 2)
    feats[0, 0] = torch.tensor([[1., 0.], [1., 0.]])  # left column: class-0 feature
    feats[0, 1] = torch.tensor([[0., 1.], [0., 1.]])  # right column: class-1 feature
    masks = torch.tensor([[[0, 0, 1, 1],
                           [0, 0, 1, 1],
                           [0, 1, 1, 255],
                           [0, 0, 1, 0]]])
    res = overclustering_eval(feats, masks, num_classes=2, num_clusters=2, matching='hungarian',
                              seed=0)
    # left cluster -> class 0 (7 of 8 pixels), right cluster -> class 1 (6 of 7 labelled)
    assert res['mapping'][res['clusters'][0, 0, 0]] == 0
    assert res['mapping'][res['clusters'][0, 0, 1]] == 1
    # cm: gt0 -> pred0: 7, gt0 -> pred1: 1 ; gt1 -> pred0: 1, gt1 -> pred1: 6
    np.testing.assert_array_equal(res['confusion'], [[7, 1], [1, 6]])
    assert res['mIoU'] == pytest.approx((7 / 9 + 6 / 8) / 2)
    assert res['pixel_acc'] == pytest.approx(13 / 15)
    maj = overclustering_eval(feats, masks, num_classes=2, num_clusters=2, matching='majority')
    assert maj['mIoU'] == pytest.approx(res['mIoU'])


def test_overclustering_majority_with_more_clusters_than_classes():
    # 3 blobs, 2 classes (blobs 0 and 1 are class 0): K=3 majority is perfect, K=2 Hungarian not
    rng = np.random.default_rng(4)
    centres = np.array([[5., 0, 0], [0, 5., 0], [0, 0, 5.]])
    blob = rng.integers(0, 3, size=(6, 3, 3))
    feats = centres[blob] + 0.01 * rng.normal(size=(6, 3, 3, 3))
    feats = torch.from_numpy(feats).permute(0, 3, 1, 2).float()
    masks = torch.from_numpy((blob == 2).astype(np.int64))  # patch-sized labels, 3x3
    res = overclustering_eval(feats, masks, num_classes=2, num_clusters=3, matching='majority',
                              n_init=3)
    assert res['mIoU'] == pytest.approx(1.0)
    assert sorted(res['mapping'].tolist()) == [0, 0, 1]
    with pytest.raises(ValueError, match='num_clusters == num_classes'):
        overclustering_eval(feats, masks, 2, 3, matching='hungarian')
    with pytest.raises(ValueError, match='num_clusters >= num_classes'):
        overclustering_eval(feats, masks, 4, 3, matching='majority')
    with pytest.raises(ValueError, match='matching must be'):
        overclustering_eval(feats, masks, 2, 3, matching='greedy')

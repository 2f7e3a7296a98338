import itertools

import numpy as np
import pytest
import torch

from cotap_mm.evaluation.dispersion import (dispersion_stats, global_instance_ids,
                                            patch_majority_labels)


def _brute(features, labels, average, ignore=255):
    """Straight from the definitions: explicit loops over pairs."""
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    keep = labels != ignore
    f, y = f[keep], labels[keep]
    classes = sorted(set(y.tolist()))
    same, diff = {}, {}
    for i, j in itertools.permutations(range(len(y)), 2):
        c = float(f[i] @ f[j])
        if y[i] == y[j]:
            same.setdefault(y[i], []).append(c)
        else:
            diff.setdefault(tuple(sorted((y[i], y[j]))), []).append(c)
    if average == 'pair':
        intra = np.mean([v for vs in same.values() for v in vs])
        inter = np.mean([v for vs in diff.values() for v in vs])
    else:
        intra = np.mean([np.mean(v) for v in same.values()])
        inter = np.mean([np.mean(diff[(a, b)]) for a, b in itertools.combinations(classes, 2)])
    return intra, inter, (1 - intra) / (1 - inter)


@pytest.mark.parametrize('average', ['class', 'pair'])
def test_matches_brute_force(average):
    rng = np.random.default_rng(0)
    for trial in range(3):
        n, c = 40, 6
        feats = rng.normal(size=(n, c))
        labels = rng.integers(0, 4, size=n)
        labels[rng.random(n) < 0.15] = 255
        inst = rng.integers(0, 8, size=n)
        out = dispersion_stats(feats, labels, inst, average=average)
        intra, inter, disp = _brute(feats, labels, average)
        assert out['intra'] == pytest.approx(intra, abs=1e-10)
        assert out['inter'] == pytest.approx(inter, abs=1e-10)
        assert out['dispersion'] == pytest.approx(disp, rel=1e-9)
        assert out['num_patches'] == int((labels != 255).sum())
        # instance statistics = class statistics with instance ids as labels (ignored dropped)
        inst_lab = np.where(labels == 255, 255, inst)
        i_intra, _, _ = _brute(feats, inst_lab, average)
        assert out['intra_instance'] == pytest.approx(i_intra, abs=1e-10)
        assert out['instance_dispersion'] == pytest.approx((1 - i_intra) / (1 - inter), rel=1e-9)


def test_tight_clusters_beat_spread_clusters():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 16))
    labels = np.repeat(np.arange(4), 30)
    tight = centres[labels] + 0.1 * rng.normal(size=(120, 16))
    spread = centres[labels] + 1.5 * rng.normal(size=(120, 16))
    a = dispersion_stats(tight, labels)
    b = dispersion_stats(spread, labels)
    assert a['intra'] > b['intra']
    assert a['dispersion'] < b['dispersion'] < 1.2
    # random features, labels unrelated: dispersion ~ 1
    r = dispersion_stats(rng.normal(size=(400, 16)), rng.integers(0, 4, 400))
    assert r['dispersion'] == pytest.approx(1.0, abs=0.1)


def test_ignore_and_torch_input_and_degenerate():
    feats = torch.randn(10, 3, dtype=torch.float32)
    labels = torch.tensor([0, 0, 1, 1, 255, 255, 0, 1, 255, 1])
    out = dispersion_stats(feats, labels)
    keep = labels != 255
    ref = dispersion_stats(feats[keep], labels[keep])
    assert out['dispersion'] == pytest.approx(ref['dispersion'])
    # scaling features does not matter (normalised)
    assert dispersion_stats(feats * 7, labels)['intra'] == pytest.approx(out['intra'])
    # a single class: inter undefined
    one = dispersion_stats(feats, torch.zeros(10, dtype=torch.long))
    assert np.isnan(one['inter']) and np.isnan(one['dispersion'])
    with pytest.raises(ValueError, match='features'):
        dispersion_stats(feats[0], labels)
    with pytest.raises(ValueError, match='labels'):
        dispersion_stats(feats, labels[:3])
    with pytest.raises(TypeError, match='floating'):
        dispersion_stats(feats.long(), labels)
    with pytest.raises(ValueError, match='average'):
        dispersion_stats(feats, labels, average='median')


def test_patch_majority_labels():
    m = np.array([[[0, 0, 1, 1],
                   [0, 2, 1, 255],
                   [3, 3, 255, 255],
                   [3, 0, 255, 255]]])
    out = patch_majority_labels(m, (2, 2))
    np.testing.assert_array_equal(out.numpy(), [[[0, 1], [3, 255]]])
    pure = patch_majority_labels(m, (2, 2), min_purity=0.9)
    np.testing.assert_array_equal(pure.numpy(), [[[255, 1], [255, 255]]])
    # brute force on random masks, non-divisible size handled by nearest resize to 8x8
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 3, size=(2, 8, 12))
    lab = patch_majority_labels(masks, (4, 3)).numpy()
    for n, i, j in itertools.product(range(2), range(4), range(3)):
        block = masks[n, 2 * i:2 * i + 2, 4 * j:4 * j + 4].ravel()
        assert lab[n, i, j] == np.bincount(block).argmax()
    assert patch_majority_labels(np.zeros((1, 10, 10), int), (4, 4)).shape == (1, 4, 4)


def test_global_instance_ids():
    inst = np.array([[[0, 1], [2, 2]], [[1, 0], [255, 1]]])
    g = global_instance_ids(inst)
    np.testing.assert_array_equal(g.numpy(), [[[255, 1], [2, 2]], [[257, 255], [255, 257]]])

"""Tests of the SCFS feature search (cotap_mm/models/algorithms/scfs_ops.py)."""
import math

import pytest
import torch

from cotap_mm.models.algorithms.scfs_ops import feature_search, search_weights


def _brute_force(query, key_map, weighting, temperature):
    """Loop over batch and positions: cosine of the query with each key vector, then re-weight."""
    B, C, h, w = key_map.shape
    weights = torch.zeros(B, h, w, dtype=torch.float64)
    for b in range(B):
        q = query[b].double()
        for i in range(h):
            for j in range(w):
                k = key_map[b, :, i, j].double()
                weights[b, i, j] = (q @ k) / (q.norm() * k.norm())
        if weighting == 'softmax':
            e = [[math.exp(weights[b, i, j].item() / temperature) for j in range(w)]
                 for i in range(h)]
            z = sum(sum(r) for r in e)
            for i in range(h):
                for j in range(w):
                    weights[b, i, j] = e[i][j] / z
    scale = h * w if weighting == 'softmax' else 1
    searched = torch.zeros(B, C, h, w, dtype=torch.float64)
    for b in range(B):
        for i in range(h):
            for j in range(w):
                searched[b, :, i, j] = scale * weights[b, i, j] * key_map[b, :, i, j].double()
    return searched, weights


@pytest.mark.parametrize('weighting', ['cosine', 'softmax'])
def test_matches_brute_force(weighting):
    g = torch.Generator().manual_seed(0)
    query = torch.randn(3, 5, generator=g)
    key_map = torch.randn(3, 5, 4, 3, generator=g)
    searched, weights = feature_search(query, key_map, weighting=weighting, temperature=0.3)
    ref_s, ref_w = _brute_force(query, key_map, weighting, 0.3)
    assert searched.shape == key_map.shape and weights.shape == (3, 4, 3)
    torch.testing.assert_close(weights.double(), ref_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(searched.double(), ref_s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(search_weights(query, key_map, weighting, 0.3), weights)


def test_cosine_weights_official_properties():
    g = torch.Generator().manual_seed(1)
    key_map = torch.randn(2, 8, 3, 3, generator=g)
    # the query is (a multiple of) the key at position (1, 2): weight exactly 1 there, the max
    query = 3.0 * key_map[:, :, 1, 2]
    searched, weights = feature_search(query, key_map)
    torch.testing.assert_close(weights[:, 1, 2], torch.ones(2))
    assert bool((weights <= 1 + 1e-6).all() and (weights >= -1 - 1e-6).all())
    assert weights.flatten(1).argmax(1).tolist() == [1 * 3 + 2] * 2
    # no normalisation over positions (official): the weights do not sum to 1 in general
    assert not torch.allclose(weights.sum(dim=(1, 2)), torch.ones(2))
    # the un-normalised key vector comes back at that position
    torch.testing.assert_close(searched[:, :, 1, 2], key_map[:, :, 1, 2])
    # scale invariance in the query (it is L2-normalised)
    torch.testing.assert_close(feature_search(0.1 * query, key_map)[1], weights)


def test_softmax_weights_sum_to_one_and_select_with_small_temperature():
    g = torch.Generator().manual_seed(2)
    key_map = torch.nn.functional.normalize(torch.randn(2, 16, 4, 4, generator=g), dim=1)
    _, weights = feature_search(torch.randn(2, 16, generator=g), key_map, 'softmax', 0.5)
    torch.testing.assert_close(weights.sum(dim=(1, 2)), torch.ones(2))
    assert bool((weights > 0).all())
    # query = key at (2, 1), tiny temperature: the searched (pooled) feature is that key
    query = key_map[:, :, 2, 1]
    searched, weights = feature_search(query, key_map, 'softmax', 1e-3)
    torch.testing.assert_close(weights[:, 2, 1], torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(searched.mean(dim=(2, 3)), key_map[:, :, 2, 1], atol=1e-5, rtol=0)
    # uniform weights (huge temperature) keep the key map
    searched, _ = feature_search(query, key_map, 'softmax', 1e6)
    torch.testing.assert_close(searched, key_map, atol=1e-4, rtol=1e-4)


def test_gradient_and_dtype():
    query = torch.randn(2, 4, requires_grad=True)
    key_map = torch.randn(2, 4, 3, 3, requires_grad=True)
    searched, _ = feature_search(query, key_map)
    searched.sum().backward()
    assert query.grad is not None and key_map.grad is not None
    searched, weights = feature_search(query.detach().half(), key_map.detach().half())
    assert searched.dtype == torch.float16 and weights.dtype == torch.float32


def test_bad_inputs():
    with pytest.raises(ValueError, match='query must be'):
        feature_search(torch.randn(2, 4, 1), torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match='key_map must be'):
        feature_search(torch.randn(2, 4), torch.randn(2, 4, 9))
    with pytest.raises(ValueError, match='agree in B and C'):
        feature_search(torch.randn(2, 5), torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match='weighting'):
        feature_search(torch.randn(2, 4), torch.randn(2, 4, 3, 3), weighting='topk')
    with pytest.raises(ValueError, match='temperature'):
        feature_search(torch.randn(2, 4), torch.randn(2, 4, 3, 3), 'softmax', 0.0)

import pytest
import torch

import cotap_mm.models.utils.feature_queue as fq
from cotap_mm.models.utils.feature_queue import FeatureQueue


def _rows(start, n, dim=3):
    return torch.arange(start, start + n, dtype=torch.float32)[:, None].expand(n, dim).clone()


def test_fifo_order_count_and_max_per_step():
    q = FeatureQueue(size=5, dim=3, max_per_step=3)
    assert len(q) == 0 and q.features().shape == (0, 3)
    assert q.enqueue(_rows(0, 2)) == 2
    torch.testing.assert_close(q.ordered(), _rows(0, 2))
    assert q.enqueue(_rows(2, 2)) == 2 and len(q) == 4
    assert q.enqueue(_rows(4, 3)) == 3  # wraps: oldest entries (0, 1) are overwritten
    assert len(q) == 5 and int(q.ptr) == 2
    torch.testing.assert_close(q.ordered(), _rows(2, 5))
    assert sorted(q.features()[:, 0].tolist()) == [2., 3., 4., 5., 6.]
    # more than max_per_step: a subset of 3 of the given rows, in their order
    assert q.enqueue(_rows(100, 10), generator=torch.Generator().manual_seed(0)) == 3
    newest = q.ordered()[-3:, 0]
    assert all(100 <= v < 110 for v in newest.tolist()) and bool((newest.diff() > 0).all())
    torch.testing.assert_close(q.ordered()[:2], _rows(5, 2))
    # a reference FIFO (python list) over random step sizes
    q = FeatureQueue(size=7, dim=3, max_per_step=4)
    ref, nxt = [], 0
    for n in [1, 4, 3, 2, 4, 4, 1, 3]:
        q.enqueue(_rows(nxt, n))
        ref = (ref + list(range(nxt, nxt + n)))[-7:]
        nxt += n
        assert q.ordered()[:, 0].tolist() == ref


def test_state_dict_round_trip_and_other_capacity():
    q = FeatureQueue(size=6, dim=3, max_per_step=4)
    for s in range(0, 14, 4):
        q.enqueue(_rows(s, 4))
    fresh = FeatureQueue(size=6, dim=3, max_per_step=4)
    fresh.load_state_dict(q.state_dict())
    assert len(fresh) == 6 and int(fresh.ptr) == int(q.ptr)
    torch.testing.assert_close(fresh.ordered(), q.ordered())
    fresh.enqueue(_rows(50, 1))
    q.enqueue(_rows(50, 1))
    torch.testing.assert_close(fresh.ordered(), q.ordered())
    # resumed with a smaller / larger capacity: the newest entries survive, oldest first
    small = FeatureQueue(size=4, dim=3)
    small.load_state_dict(q.state_dict())
    torch.testing.assert_close(small.ordered(), q.ordered()[-4:])
    big = FeatureQueue(size=10, dim=3)
    big.load_state_dict(q.state_dict())
    assert len(big) == 6
    torch.testing.assert_close(big.ordered(), q.ordered())
    big.enqueue(_rows(60, 2))
    torch.testing.assert_close(big.ordered()[-2:], _rows(60, 2))


def test_split_across_ranks(monkeypatch):
    monkeypatch.setattr(fq, 'get_world_size', lambda: 4)
    assert FeatureQueue(size=262144, dim=2).capacity == 65536
    assert FeatureQueue(size=10, dim=2).capacity == 3
    assert FeatureQueue(size=10, dim=2, split_across_ranks=False).capacity == 10


def test_bad_inputs():
    with pytest.raises(ValueError, match='size'):
        FeatureQueue(size=0, dim=3)
    with pytest.raises(ValueError, match='max_per_step'):
        FeatureQueue(size=4, dim=3, max_per_step=0)
    with pytest.raises(ValueError, match=r'\[n, 3\]'):
        FeatureQueue(size=4, dim=3).enqueue(torch.zeros(2, 4))

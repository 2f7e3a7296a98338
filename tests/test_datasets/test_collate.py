import pytest
import torch
from mmengine.registry import FUNCTIONS
from mmpretrain.structures import DataSample

from cotap_mm.datasets.coco_unlabeled import mark_packed
from cotap_mm.datasets.collate import flatten_neighbor_groups, neighbor_collate

V, T = 3, 1  # views per item: 2 x 8 px + 1 x 4 px student, 1 x 8 px teacher


def item(tag: int, source=None, is_neighbor=None):
    """A packed item whose pixels all equal ``tag`` (to follow it through the batch)."""
    inputs = [torch.full((3, s, s), tag, dtype=torch.uint8) for s in (8, 8, 4, 8)]
    packed = dict(inputs=inputs, data_samples=DataSample(metainfo=dict(tag=tag)))
    if source is not None:
        mark_packed(packed, source, is_neighbor)
    return packed


def tags(batch):
    return [int(x) for x in batch['inputs'][0][:, 0, 0, 0]]


def test_registered():
    assert FUNCTIONS.get('neighbor_collate') is neighbor_collate


def test_plain_items_pass_through():
    batch = neighbor_collate([item(1), item(2, 'imagenet', False), item(3)])
    assert len(batch['inputs']) == V + T
    assert [tuple(t.shape) for t in batch['inputs']] == [(3, 3, 8, 8), (3, 3, 8, 8), (3, 3, 4, 4),
                                                         (3, 3, 8, 8)]
    assert tags(batch) == [1, 2, 3]
    samples = batch['data_samples']
    assert [s.neighbor_index for s in samples] == [-1, -1, -1]
    assert [s.source for s in samples] == ['coco', 'imagenet', 'coco']  # default only if unset
    assert [s.is_neighbor for s in samples] == [False] * 3
    batch = neighbor_collate([item(1)], default_source=None)
    assert 'source' not in batch['data_samples'][0]
    batch = neighbor_collate([item(1)], default_source='scenes')
    assert batch['data_samples'][0].source == 'scenes'


def test_pairs_and_mixed_groups():
    groups = [
        [item(10, 'coco', False), item(11, 'coco', True),
         item(12, 'imagenet', False), item(13, 'imagenet', True)],
        [item(20, 'coco', False), item(21, 'coco', True),
         item(22, 'imagenet', False), item(23, 'imagenet', True)],
    ]
    batch = neighbor_collate(groups)
    assert tags(batch) == [10, 11, 12, 13, 20, 21, 22, 23]  # groups consecutive, in order
    assert all(t.shape[0] == 8 for t in batch['inputs'])
    samples = batch['data_samples']
    nidx = [s.neighbor_index for s in samples]
    assert nidx == [1, 0, 3, 2, 5, 4, 7, 6]
    for i, j in enumerate(nidx):  # partners point to each other, same source, one is neighbour
        assert nidx[j] == i and samples[i].source == samples[j].source
        assert samples[i].is_neighbor != samples[j].is_neighbor
        assert abs(tags(batch)[i] - tags(batch)[j]) == 1
    assert [s.source for s in samples] == ['coco', 'coco', 'imagenet', 'imagenet'] * 2


def test_groups_without_neighbours_and_unpaired_anchors():
    # mixed dataset without neighbour files: [coco, imagenet] groups, nobody has a partner
    flat = flatten_neighbor_groups([[item(1, 'coco', False), item(2, 'imagenet', False)],
                                    item(3), [item(4, 'coco', False), item(5, 'coco', True)]])
    assert [f['data_samples'].tag for f in flat] == [1, 2, 3, 4, 5]
    assert [f['data_samples'].neighbor_index for f in flat] == [-1, -1, -1, 4, 3]
    # the anchor preceding a neighbour is its partner, also after an unpaired anchor
    flat = flatten_neighbor_groups([[item(1, 'coco', False), item(2, 'coco', False),
                                     item(3, 'coco', True)]])
    assert [f['data_samples'].neighbor_index for f in flat] == [-1, 2, 1]


def test_bad_groups():
    with pytest.raises(ValueError, match='without a preceding anchor'):
        neighbor_collate([[item(1, 'coco', True), item(2, 'coco', False)]])
    with pytest.raises(ValueError, match='more than one neighbour'):
        neighbor_collate([[item(1, 'coco', False), item(2, 'coco', True),
                           item(3, 'coco', True)]])
    with pytest.raises(ValueError, match='empty group'):
        neighbor_collate([[]])
    with pytest.raises(TypeError, match='batch item 1, member 0'):
        neighbor_collate([item(1), {'img': 0}])
    with pytest.raises(TypeError, match='packing transform'):
        mark_packed({'inputs': []}, 'coco', False)

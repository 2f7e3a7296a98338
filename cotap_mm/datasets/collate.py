"""Collate groups of (anchor, neighbour) items into one flat batch.

Registered in mmengine's ``FUNCTIONS`` registry (the one ``Runner.build_dataloader`` looks
``collate_fn=dict(type=...)`` up in; mmpretrain has no ``FUNCTIONS`` registry of its own), so a
config uses ``collate_fn=dict(type='neighbor_collate')``.
"""
from typing import Any, List, Optional, Sequence

from mmengine.dataset import default_collate
from mmengine.registry import FUNCTIONS

__all__ = ['neighbor_collate', 'flatten_neighbor_groups']


def _sample_of(item: Any, where: str):
    sample = item.get('data_samples') if isinstance(item, dict) else None
    if sample is None or not hasattr(sample, 'set_metainfo'):
        raise TypeError(f'{where}: expected a packed dict {{"inputs": ..., "data_samples": '
                        f'DataSample}}, got {type(item).__name__}'
                        + (f' with keys {sorted(item)}' if isinstance(item, dict) else ''))
    return sample


def flatten_neighbor_groups(data_batch: Sequence[Any],
                            default_source: Optional[str] = 'coco') -> List[dict]:
    """Flatten dataset items into one list and set ``neighbor_index`` / ``source`` on each sample.

    An item is a packed dict (no partner) or a list of packed dicts (a group, e.g.
    ``[anchor, neighbour]`` or ``[coco_anchor, coco_neighbour, in_anchor, in_neighbour]``). Group
    members stay consecutive, in order. A member whose metainfo has ``is_neighbor=True`` (written
    by the datasets, :func:`~cotap_mm.datasets.coco_unlabeled.mark_packed`) is the partner of the
    closest preceding non-neighbour member of the same group; the two get each other's batch
    position as ``neighbor_index``. Members without a partner get ``neighbor_index = -1``.

    Args:
        data_batch (Sequence): the dataset items of one batch.
        default_source (str, optional): ``source`` given to samples whose dataset did not write
            one (plain datasets such as ``CustomDataset`` / ``SyntheticScenes`` in COCO-only
            configs); None leaves them without ``source``. Defaults to 'coco'.

    Returns:
        list[dict]: flat packed items, their ``DataSample`` metainfo holding ``neighbor_index``
        (int), ``source`` (str) and ``is_neighbor`` (bool).

    Raises:
        TypeError: an item is neither a packed dict nor a list of them.
        ValueError: a neighbour has no preceding anchor in its group, or an anchor two
            neighbours.
    """
    flat: List[dict] = []
    for g, item in enumerate(data_batch):
        group = item if isinstance(item, (list, tuple)) else [item]
        if len(group) == 0:
            raise ValueError(f'batch item {g} is an empty group')
        start = len(flat)
        anchor_pos: Optional[int] = None
        partnered = set()
        for m, member in enumerate(group):
            sample = _sample_of(member, f'batch item {g}, member {m}')
            pos = start + m
            meta = sample.metainfo
            is_neighbor = bool(meta.get('is_neighbor', False))
            if 'source' not in meta and default_source is not None:
                sample.set_metainfo(dict(source=default_source))
            sample.set_metainfo(dict(is_neighbor=is_neighbor, neighbor_index=-1))
            if is_neighbor:
                if anchor_pos is None:
                    raise ValueError(f'batch item {g}, member {m} is a neighbour without a '
                                     'preceding anchor in its group')
                if anchor_pos in partnered:
                    raise ValueError(f'batch item {g}: the anchor at member {anchor_pos - start} '
                                     'has more than one neighbour')
                partnered.add(anchor_pos)
                sample.set_metainfo(dict(neighbor_index=anchor_pos))
                flat[anchor_pos]['data_samples'].set_metainfo(dict(neighbor_index=pos))
            else:
                anchor_pos = pos
            flat.append(member)
    return flat


@FUNCTIONS.register_module()
def neighbor_collate(data_batch: Sequence[Any], default_source: Optional[str] = 'coco') -> Any:
    """Collate CoTAP items with neighbours (and plain items) for ``SelfSupDataPreprocessor``.

    Flattens the groups with :func:`flatten_neighbor_groups` (batch order: every group's members
    consecutive, groups in dataset-item order), then applies mmengine's ``default_collate``: the
    model gets ``inputs`` as a list of ``V + T`` tensors ``[B_total, 3, h, w]`` and
    ``data_samples`` as a list of ``B_total`` ``DataSample`` with ``neighbor_index``, ``source``
    and ``is_neighbor`` metainfo. With plain dict items it equals ``default_collate`` plus
    ``neighbor_index=-1`` and the default ``source``.

    Args:
        data_batch (Sequence): dataset items.
        default_source (str, optional): see :func:`flatten_neighbor_groups`. Defaults to 'coco'.
    """
    return default_collate(flatten_neighbor_groups(data_batch, default_source))

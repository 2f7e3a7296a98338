"""One item of each of several datasets per index: CoTAP's simultaneous COCO + ImageNet data."""
import copy
from typing import Any, List, Sequence, Union

from mmengine.dataset import BaseDataset
from mmpretrain.registry import DATASETS
from torch.utils.data import Dataset

__all__ = ['PairedMixDataset', 'MixedCOCOImageNet']


@DATASETS.register_module()
class PairedMixDataset(Dataset):
    """Index ``i`` returns item ``i mod len(d)`` of every dataset ``d``, concatenated in a list.

    CoTAP (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_) trains on COCO and ImageNet at
    the same time: every index gives one COCO item (for the patch losses) and one ImageNet item (for
    the CLS losses), and the epoch is as long as ImageNet. Each dataset's item is a packed dict or,
    with neighbours, ``[anchor, neighbour]``; they are concatenated in dataset order, e.g.
    ``[coco_anchor, coco_neighbour, in_anchor, in_neighbour]``, the group
    :func:`~cotap_mm.datasets.collate.neighbor_collate` flattens into the batch (the sources and
    roles are in each sample's metainfo, written by the datasets).

    Like mmengine's ``ConcatDataset`` this is a wrapper (not a ``BaseDataset``); sub-datasets
    keep their own refetch logic for unreadable images.

    Args:
        datasets (Sequence[dict | Dataset]): at least two datasets or their configs.
        length (str | int): the epoch length: ``'max'`` (default; the longest dataset, ImageNet
            in CoTAP), ``'min'``, or the position of the dataset whose length is used.
        lazy_init (bool): defer the sub-datasets' ``full_init``. Defaults to False.
    """

    def __init__(self,
                 datasets: Sequence[Union[dict, Dataset]],
                 length: Union[str, int] = 'max',
                 lazy_init: bool = False) -> None:
        if not isinstance(datasets, (list, tuple)) or len(datasets) < 2:
            raise ValueError('datasets must be a list of at least two datasets or configs, got '
                             f'{type(datasets).__name__} of length '
                             f'{len(datasets) if hasattr(datasets, "__len__") else "?"}')
        self.datasets: List[Dataset] = []
        for i, d in enumerate(datasets):
            if isinstance(d, dict):
                d = DATASETS.build(d)
            if not isinstance(d, Dataset) or not hasattr(d, '__len__'):
                raise TypeError(f'datasets[{i}] must be a Dataset or a dataset config, got '
                                f'{type(d).__name__}')
            self.datasets.append(d)
        if isinstance(length, bool) or not (length in ('max', 'min') or (
                isinstance(length, int) and -len(self.datasets) <= length < len(self.datasets))):
            raise ValueError(f"length must be 'max', 'min' or a dataset position in "
                             f'[{-len(self.datasets)}, {len(self.datasets)}), got {length!r}')
        self.length_mode = length
        self._fully_initialized = False
        if not lazy_init:
            self.full_init()

    @property
    def metainfo(self) -> dict:
        """The first dataset's metainfo plus ``sources``: every dataset's ``source_name``."""
        meta = copy.deepcopy(getattr(self.datasets[0], 'metainfo', {}) or {})
        meta['sources'] = tuple(getattr(d, 'source_name', type(d).__name__) for d in self.datasets)
        return meta

    def full_init(self) -> None:
        """Fully initialise every sub-dataset and check none is empty."""
        if self._fully_initialized:
            return
        for i, d in enumerate(self.datasets):
            if isinstance(d, BaseDataset) or hasattr(d, 'full_init'):
                d.full_init()
            if len(d) == 0:
                raise ValueError(f'datasets[{i}] ({type(d).__name__}) is empty')
        self._fully_initialized = True

    def __len__(self) -> int:
        self.full_init()
        lengths = [len(d) for d in self.datasets]
        if self.length_mode == 'max':
            return max(lengths)
        if self.length_mode == 'min':
            return min(lengths)
        return lengths[self.length_mode]

    def source_indices(self, idx: int) -> List[int]:
        """Index into every dataset for mix index ``idx``: ``idx mod len(d)``."""
        n = len(self)
        if not -n <= idx < n:
            raise IndexError(f'index {idx} out of range for {type(self).__name__} of length {n}')
        idx = idx % n
        return [idx % len(d) for d in self.datasets]

    def __getitem__(self, idx: int) -> List[Any]:
        items: List[Any] = []
        for d, j in zip(self.datasets, self.source_indices(idx)):
            item = d[j]
            items.extend(item if isinstance(item, list) else [item])
        return items


@DATASETS.register_module()
class MixedCOCOImageNet(PairedMixDataset):
    """CoTAP's pretraining data: one COCO and one ImageNet item per index, ImageNet epoch length.

    Index ``i`` gives COCO item ``i mod len(COCO)`` and ImageNet item ``i``; with neighbour files
    on both the item is ``[coco_anchor, coco_neighbour, in_anchor, in_neighbour]``
    (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_, official ``coco+in1k`` data config).
    For COCO-only training use :class:`~cotap_mm.datasets.coco_unlabeled.COCOUnlabeled` directly.

    Args:
        coco (dict | Dataset): the COCO dataset (e.g. ``COCOUnlabeled``) or its config.
        imagenet (dict | Dataset): the ImageNet dataset (e.g. ``ImageNetUnlabeled``) or its config.
        lazy_init (bool): defer the sub-datasets' ``full_init``. Defaults to False.
    """

    def __init__(self, coco: Union[dict, Dataset], imagenet: Union[dict, Dataset],
                 lazy_init: bool = False) -> None:
        super().__init__([coco, imagenet], length=1, lazy_init=lazy_init)

    @property
    def coco(self) -> Dataset:
        return self.datasets[0]

    @property
    def imagenet(self) -> Dataset:
        return self.datasets[1]

"""Unlabelled image datasets that can also return a precomputed nearest-neighbour image.

CoTAP (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_) post-pretrains on COCO train2017
(unlabelled) and ImageNet-1k; with every image it loads a partner drawn uniformly from the first 7
columns of a precomputed neighbour table, which in the released (STEGO-layout) files are the image
itself and its 6 nearest neighbours (``tools/misc/compute_neighbors.py`` writes the neighbour file,
format in :mod:`cotap_mm.datasets.neighbors`).

Item format (the batch interface shared with the model, flattened by
:func:`~cotap_mm.datasets.collate.neighbor_collate`):

* without ``neighbors_file``: the pipeline output of the image (e.g. the
  :class:`~cotap_mm.datasets.transforms.formatting.PackGeometricViews` dict
  ``{'inputs': [...], 'data_samples': DataSample}``);
* with ``neighbors_file``: a list ``[anchor, neighbour]`` of two such dicts, each image through
  the pipeline independently.

The dataset writes into each packed ``DataSample`` the metainfo ``source`` (``source_name``, e.g.
``'coco'``) and ``is_neighbor`` (False for the anchor, True for the neighbour), after the pipeline,
so any packing transform and its ``meta_keys`` work unchanged.
"""
import json
import logging
import os.path as osp
from typing import Any, Callable, List, Optional, Sequence, Set, Union

import numpy as np
from mmengine.fileio import get_file_backend, get_text, list_from_file
from mmengine.logging import print_log
from mmpretrain.datasets import CustomDataset
from mmpretrain.registry import DATASETS

from .image_check import BadImageError
from .neighbors import (neighbor_candidates, neighbor_index_table, read_neighbors, relative_key,
                        sample_neighbor)

__all__ = ['UnlabeledImageDataset', 'COCOUnlabeled', 'mark_packed']

MAX_BAD_IMAGES_IN_A_ROW = 100  # with skip_bad_images: give up after this many in a row


def _strip_label(line: str) -> str:
    """``'n01440764/x.JPEG 0'`` -> ``'n01440764/x.JPEG'`` (mmpretrain's ``meta/train.txt``)."""
    line = line.strip()
    parts = line.rsplit(' ', 1)
    if len(parts) == 2 and parts[1].lstrip('-').isdigit():
        return parts[0].strip()
    return line


def mark_packed(packed: Any, source: str, is_neighbor: bool) -> Any:
    """Write ``source`` and ``is_neighbor`` into the ``data_samples`` of a packed pipeline output.

    Args:
        packed (dict): pipeline output with a ``data_samples`` :class:`DataSample` (or any
            ``BaseDataElement``).
        source (str): data source name, e.g. ``'coco'``.
        is_neighbor (bool): whether this item is the neighbour of the preceding anchor.

    Returns:
        dict: ``packed`` (modified in place).
    """
    sample = packed.get('data_samples') if isinstance(packed, dict) else None
    if sample is None or not hasattr(sample, 'set_metainfo'):
        raise TypeError('the pipeline must end with a packing transform that returns '
                        "{'inputs': ..., 'data_samples': DataSample} (e.g. PackGeometricViews), "
                        f'got {type(packed).__name__}'
                        + (f' with keys {sorted(packed)}' if isinstance(packed, dict) else ''))
    sample.set_metainfo(dict(source=source, is_neighbor=bool(is_neighbor)))
    return packed


@DATASETS.register_module()
class UnlabeledImageDataset(CustomDataset):
    """Unlabelled images from a folder or a list, with an optional nearest-neighbour partner.

    The image list is every file with an allowed extension under ``data_root/data_prefix``
    (recursively, sorted; mmpretrain's ``CustomDataset(with_label=False)``), or, with ``ann_file``,
    the file names it lists (one per line, relative to ``data_root/data_prefix``, a trailing integer
    label as in mmpretrain's ``meta/train.txt`` is dropped; a ``.json`` COCO annotation file gives
    the ``file_name`` of its ``images``). Labels are never read.

    With ``neighbors_file`` each item is ``[anchor, neighbour]``: the neighbour is drawn uniformly
    among the first ``num_neighbors`` columns of the image's row (with ``np.random``, which
    mmengine seeds per worker; :func:`~cotap_mm.datasets.neighbors.neighbor_candidates`) and goes
    through the same pipeline. As released, a file whose column 0 is the image itself
    (``meta['includes_self']``, the default of ``compute_neighbors.py``) makes about one pair in
    ``num_neighbors`` the image with itself; ``exclude_self=True`` never draws the image itself.
    Paths in the file are matched relative to ``data_root`` (see
    :func:`~cotap_mm.datasets.neighbors.relative_key`).

    Args:
        data_root (str): root of the images and of the paths in the neighbour file.
            Defaults to ''.
        data_prefix (str | dict): image folder under ``data_root``. Defaults to ''.
        ann_file (str): optional image list (text or COCO ``.json``). Defaults to ''.
        neighbors_file (str, optional): neighbour file (``.npz`` / ``.json``). Defaults to None
            (no neighbours: items are plain pipeline outputs).
        strict_neighbors (bool): every listed neighbour must be in the dataset; if False,
            neighbours outside it are skipped (e.g. a subset via ``ann_file`` or ``indices``).
            Defaults to True.
        num_neighbors (int, optional): draw among the first ``num_neighbors`` columns of the
            file (after dropping the self column with ``exclude_self``); None = all columns.
            Defaults to 7 (released: columns 0-6).
        exclude_self (bool): never draw the image itself (drops column 0 of a self-including
            file). Defaults to False (released).
        source_name (str): value of the ``source`` metainfo written into every packed sample.
            Defaults to 'images'.
        skip_bad_images (bool): an image the pipeline cannot load is logged once (with the
            running count) and the sample is replaced by the next readable one (the whole item,
            neighbour included). Defaults to False: a :class:`BadImageError` naming the file stops
            the run.
        extensions (Sequence[str]): allowed image extensions when scanning the folder.
        pipeline (Sequence[dict | Callable]): transforms, ending with a packing transform.
        **kwargs: other :class:`mmpretrain.datasets.BaseDataset` arguments (``indices``,
            ``serialize_data``, ``lazy_init``, ``max_refetch``, ``metainfo``...).
    """

    def __init__(self,
                 data_root: str = '',
                 data_prefix: Union[str, dict] = '',
                 ann_file: str = '',
                 neighbors_file: Optional[str] = None,
                 strict_neighbors: bool = True,
                 num_neighbors: Optional[int] = 7,
                 exclude_self: bool = False,
                 source_name: str = 'images',
                 skip_bad_images: bool = False,
                 extensions: Sequence[str] = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm',
                                              '.tif'),
                 pipeline: Sequence[Union[dict, Callable]] = (),
                 lazy_init: bool = False,
                 **kwargs) -> None:
        if not isinstance(source_name, str) or not source_name:
            raise ValueError(f'source_name must be a non-empty str, got {source_name!r}')
        if neighbors_file is not None and not isinstance(neighbors_file, str):
            raise TypeError(f'neighbors_file must be a str or None, got {neighbors_file!r}')
        self.source_name = source_name
        self.neighbors_file = neighbors_file
        self.strict_neighbors = bool(strict_neighbors)
        if num_neighbors is not None and (isinstance(num_neighbors, bool)
                                          or not isinstance(num_neighbors, int)
                                          or num_neighbors < 1):
            raise ValueError(f'num_neighbors must be a positive int or None, got '
                             f'{num_neighbors!r}')
        if not isinstance(exclude_self, bool):
            raise TypeError(f'exclude_self must be a bool, got {exclude_self!r}')
        self.num_neighbors = num_neighbors
        self.exclude_self = exclude_self
        self.neighbor_indices: Optional[np.ndarray] = None
        self.skip_bad_images = bool(skip_bad_images)
        self._bad_paths: Set[str] = set()
        super().__init__(
            data_root=data_root,
            data_prefix=data_prefix,
            ann_file=ann_file,
            with_label=False,
            extensions=extensions,
            pipeline=pipeline,
            lazy_init=lazy_init,
            **kwargs)

    @property
    def with_neighbors(self) -> bool:
        """Whether items are ``[anchor, neighbour]`` pairs."""
        return self.neighbors_file is not None

    def _image_names(self) -> List[str]:
        """File names relative to the image folder: from ``ann_file`` or a folder scan."""
        if not self.ann_file:
            return self._find_samples()
        if self.ann_file.lower().endswith('.json'):
            try:
                content = json.loads(get_text(self.ann_file))
                names = [str(img['file_name']) for img in content['images']]
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f'ann_file {self.ann_file}: expected a COCO annotation file with '
                                 f"'images': [{{'file_name': ...}}, ...] ({e!r})") from e
        else:
            names = [_strip_label(n) for n in list_from_file(self.ann_file) if n.strip()]
        if not names:
            raise ValueError(f'ann_file {self.ann_file} lists no images')
        return names

    def load_data_list(self) -> List[dict]:
        """``dict(img_path=...)`` for every image (no labels)."""
        backend = get_file_backend(self.img_prefix, enable_singleton=True)
        return [dict(img_path=backend.join_path(self.img_prefix, name))
                for name in self._image_names()]

    def full_init(self) -> None:
        """Load the image list, then map the neighbour file onto the dataset's indices."""
        if self._fully_initialized:
            return
        super().full_init()
        if self.neighbors_file is not None:
            table = read_neighbors(self.neighbors_file)
            keys = [relative_key(self.get_data_info(i)['img_path'], self.data_root)
                    for i in range(len(self))]
            indices = neighbor_index_table(table, keys, self.strict_neighbors,
                                           self.neighbors_file)
            self.neighbor_indices = neighbor_candidates(indices, self.num_neighbors,
                                                        table.includes_self, self.exclude_self,
                                                        self.neighbors_file)
            with_self = table.includes_self and not self.exclude_self
            print_log(f'{type(self).__name__}: partner drawn uniformly among '
                      f'{self.neighbor_indices.shape[1]} columns of {self.neighbors_file} ('
                      + ('the image itself in column 0)' if with_self else
                         'never the image itself)'), logger='current')

    def sample_neighbor_index(self, idx: int) -> int:
        """Dataset index of the partner of image ``idx``, uniform among its candidate columns."""
        if self.neighbor_indices is None:
            raise RuntimeError(f'{type(self).__name__} has no neighbors_file')
        return sample_neighbor(self.neighbor_indices[idx])

    def _run_pipeline(self, info: dict) -> Any:
        """The pipeline, with loading failures as :class:`BadImageError` naming the file and any
        other transform's error annotated with it."""
        path = info.get('img_path', '?')
        data: Any = info
        for t in self.pipeline.transforms:
            try:
                data = t(data)
            except Exception as e:
                if 'LoadImage' in type(t).__name__:
                    empty = osp.isfile(path) and osp.getsize(path) == 0
                    why = 'empty file (0 bytes)' if empty else f'{type(e).__name__}: {e}'
                    raise BadImageError(path, why) from e
                e.add_note(f'while preparing image {path} ({type(t).__name__})')
                raise
            if data is None:
                return None
        return data

    def _prepare_one(self, idx: int, is_neighbor: bool) -> Any:
        packed = self._run_pipeline(self.get_data_info(idx))
        if packed is None:  # a transform asked for a refetch
            return None
        return mark_packed(packed, self.source_name, is_neighbor)

    def _prepare_item(self, idx: int) -> Any:
        anchor = self._prepare_one(idx, False)
        if anchor is None or not self.with_neighbors:
            return anchor
        neighbor = self._prepare_one(self.sample_neighbor_index(idx), True)
        if neighbor is None:
            return None
        return [anchor, neighbor]

    def prepare_data(self, idx: int) -> Any:
        """The packed image, or ``[anchor, neighbour]`` with ``neighbors_file``.

        Raises:
            BadImageError: an image cannot be read (unless ``skip_bad_images``; see the class).
        """
        if not self.skip_bad_images:
            return self._prepare_item(idx)
        n = len(self)
        tries = min(n, MAX_BAD_IMAGES_IN_A_ROW)
        for k in range(tries):
            try:
                return self._prepare_item((idx + k) % n)
            except BadImageError as e:
                self._report_bad_image(e, idx)
        raise RuntimeError(f'{type(self).__name__}: no readable image among {tries} samples '
                           f'from index {idx} (data_root={self.data_root!r}); check the data with '
                           'tools/misc/check_images.py')

    def _report_bad_image(self, err: BadImageError, idx: int) -> None:
        """Log a bad file once (per process) with the running count."""
        if err.path in self._bad_paths:
            return
        self._bad_paths.add(err.path)
        print_log(f'{type(self).__name__} skip_bad_images: {err} -- sample {idx} is replaced by '
                  f'the next readable one ({len(self._bad_paths)} bad image file(s) skipped so '
                  'far by this process)', logger='current', level=logging.WARNING)

    @property
    def num_bad_images(self) -> int:
        """How many distinct bad image files this process has skipped."""
        return len(self._bad_paths)

    def extra_repr(self) -> List[str]:
        body = super().extra_repr()
        body.append(f'Source name: \t{self.source_name}')
        body.append(f'Neighbors file: \t{self.neighbors_file}')
        if self.neighbors_file is not None:
            body.append(f'Neighbor columns: \t{self.num_neighbors} (exclude_self='
                        f'{self.exclude_self})')
        return body


@DATASETS.register_module()
class COCOUnlabeled(UnlabeledImageDataset):
    """COCO train2017 images without labels, optionally with a nearest-neighbour partner.

    The CoTAP (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_) patch-level data: the
    118,287 images of ``data/coco/train2017/*.jpg`` (standard layout), or the images of a COCO
    instances file (``ann_file='annotations/instances_train2017.json'``, annotations ignored) or of
    a text list of file names. Items: see :class:`UnlabeledImageDataset`; ``source='coco'``.

    Args:
        data_root (str): Defaults to 'data/coco'.
        data_prefix (str | dict): Defaults to 'train2017'.
        ann_file (str): optional image list or COCO json. Defaults to ''.
        neighbors_file (str, optional): neighbour file. Defaults to None.
        source_name (str): Defaults to 'coco'.
        **kwargs: see :class:`UnlabeledImageDataset`.
    """

    def __init__(self,
                 data_root: str = 'data/coco',
                 data_prefix: Union[str, dict] = 'train2017',
                 ann_file: str = '',
                 neighbors_file: Optional[str] = None,
                 source_name: str = 'coco',
                 **kwargs) -> None:
        super().__init__(
            data_root=data_root,
            data_prefix=data_prefix,
            ann_file=ann_file,
            neighbors_file=neighbors_file,
            source_name=source_name,
            **kwargs)

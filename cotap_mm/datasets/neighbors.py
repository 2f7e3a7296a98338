"""Precomputed k-nearest-neighbour images: the kNN search and the neighbour file.

CoTAP (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_) loads, with every training image, one
image drawn uniformly from the first 7 columns of a precomputed neighbour table. The released tables
are STEGO's ``precompute_knns`` files: cosine similarity of the mean-pooled last-layer patch tokens
(after the final norm) of a DINO ViT, column 0 being the image itself, so about one pair in seven is
the image with itself. ``tools/misc/compute_neighbors.py`` computes such a file (or, as an option,
the CLS-token / self-excluded variant) with :func:`knn_cosine` / :func:`knn_cosine_self_first` and
:func:`write_neighbors`; the datasets
(:class:`~cotap_mm.datasets.coco_unlabeled.UnlabeledImageDataset` and subclasses) read it with
:func:`read_neighbors`, map it to their own indices with :func:`neighbor_index_table` and pick the
columns to draw from with :func:`neighbor_candidates`.

Neighbour file format
---------------------
A ``.npz`` (numpy ``savez``; loads with ``allow_pickle=False``) or a ``.json`` file (small sets,
human-readable) with the keys

* ``img_paths``: ``N`` unique image paths, relative to the data root the tool was given (e.g.
  ``train2017/000000000009.jpg`` for ``data_root='data/coco'``; always ``/``-separated);
* ``neighbors``: int ``[N, k]``, row ``i`` the indices (into ``img_paths``) of image ``i``'s
  neighbours, most similar first, all in ``[0, N)``. If ``meta['includes_self']`` is true, column 0
  is ``i`` itself (STEGO / released layout) and columns ``1..k-1`` never are; otherwise no column is
  ``i``;
* ``similarities``: float32 ``[N, k]``, the cosine similarities of those neighbours (non-increasing
  along each row; column 0 of a self-including file is the image's similarity with itself, 1);
* ``meta`` (optional): a JSON object (in ``.npz``: a JSON string) describing how the file was made
  (config, checkpoint, image size, ``feature``, ``includes_self`` (bool, default false), ...).

:func:`read_neighbors` validates all of this and names the file and the problem otherwise.
"""
import json
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    'NeighborTable', 'knn_cosine', 'knn_cosine_self_first', 'write_neighbors', 'read_neighbors',
    'neighbor_index_table', 'neighbor_candidates', 'relative_key', 'sample_neighbor'
]

NEIGHBOR_FILE_SUFFIXES: Tuple[str, ...] = ('.npz', '.json')


@dataclass
class NeighborTable:
    """Contents of a neighbour file (see the module docstring).

    Attributes:
        img_paths (list[str]): ``N`` image paths relative to the data root.
        neighbors (np.ndarray): int64 ``[N, k]`` neighbour indices into ``img_paths``.
        similarities (np.ndarray): float32 ``[N, k]`` cosine similarities.
        meta (dict): how the file was made. Defaults to ``{}``.
    """
    img_paths: List[str]
    neighbors: np.ndarray
    similarities: np.ndarray
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        """Number of columns per image (the image itself included if :attr:`includes_self`)."""
        return int(self.neighbors.shape[1])

    @property
    def includes_self(self) -> bool:
        """Whether column 0 is the image itself (``meta['includes_self']``, STEGO layout)."""
        return bool(self.meta.get('includes_self', False))

    def __len__(self) -> int:
        return len(self.img_paths)


def _query_rows(queries: Optional[Union[torch.Tensor, slice]], n: int,
                device: torch.device) -> torch.Tensor:
    """Row indices ``[Q]`` (int64, on ``device``) of ``queries`` (None = all ``n`` rows)."""
    if queries is None:
        return torch.arange(n, device=device)
    if isinstance(queries, slice):
        return torch.arange(n, device=device)[queries]
    q_idx = torch.as_tensor(queries, dtype=torch.long, device=device).reshape(-1)
    if q_idx.numel() and (q_idx.min() < 0 or q_idx.max() >= n):
        raise ValueError(f'queries must index rows in [0, {n}), got range '
                         f'[{int(q_idx.min())}, {int(q_idx.max())}]')
    return q_idx


@torch.no_grad()
def knn_cosine(features: torch.Tensor,
               k: int = 7,
               queries: Optional[Union[torch.Tensor, slice]] = None,
               query_chunk: int = 1024,
               key_chunk: int = 65536,
               exclude_self: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` cosine neighbours of rows of ``features`` among all rows, in chunks.

    Memory is bounded by ``query_chunk x key_chunk`` similarities: for each block of queries the
    keys are scanned block by block and a running top-``k`` is merged, so ``N`` in the millions
    (ImageNet) works on one GPU. Features are L2-normalised here (zero rows stay zero).

    Args:
        features (Tensor): ``[N, D]`` features (any float dtype; computed in float32).
        k (int): neighbours per query, ``1 <= k <= N - 1`` with ``exclude_self`` (``<= N``
            otherwise). Defaults to 7 (CoTAP).
        queries (Tensor | slice, optional): which rows to query, a 1-D int64 tensor of row
            indices or a slice (e.g. one rank's shard); None = all rows. Defaults to None.
        query_chunk (int): queries per block. Defaults to 1024.
        key_chunk (int): keys per block. Defaults to 65536.
        exclude_self (bool): never return a query as its own neighbour (by index; duplicates
            of the same image at other indices are kept). Defaults to True.

    Returns:
        tuple[Tensor, Tensor]: ``indices`` int64 ``[Q, k]`` into the rows of ``features`` and
        ``similarities`` float32 ``[Q, k]``, most similar first, on ``features``' device.
    """
    if not isinstance(features, torch.Tensor) or features.ndim != 2:
        got = (tuple(features.shape) if isinstance(features, torch.Tensor) else
               type(features).__name__)
        raise ValueError(f'features must be a [N, D] tensor, got {got}')
    n = features.shape[0]
    max_k = n - 1 if exclude_self else n
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        raise ValueError(f'k must be an int in [1, {max_k}] for N={n} features '
                         f'(exclude_self={exclude_self}), got {k!r}')
    for name, val in (('query_chunk', query_chunk), ('key_chunk', key_chunk)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(f'{name} must be a positive int, got {val!r}')
    feats = torch.nn.functional.normalize(features.float(), dim=1)
    q_idx = _query_rows(queries, n, feats.device)
    out_idx = torch.empty(len(q_idx), k, dtype=torch.long, device=feats.device)
    out_sim = torch.empty(len(q_idx), k, dtype=torch.float32, device=feats.device)
    for qs in range(0, len(q_idx), query_chunk):
        qi = q_idx[qs:qs + query_chunk]
        q = feats[qi]
        best_sim = torch.full((len(qi), 0), -float('inf'), device=feats.device)
        best_idx = torch.empty((len(qi), 0), dtype=torch.long, device=feats.device)
        for ks in range(0, n, key_chunk):
            sims = q @ feats[ks:ks + key_chunk].T  # [q, kc]
            if exclude_self:
                local = qi - ks
                hit = (local >= 0) & (local < sims.shape[1])
                rows = torch.nonzero(hit).flatten()
                sims[rows, local[rows]] = -float('inf')
            kk = min(k, sims.shape[1])
            s, i = sims.topk(kk, dim=1)
            best_sim = torch.cat([best_sim, s], 1)
            best_idx = torch.cat([best_idx, i + ks], 1)
            if best_sim.shape[1] > k:
                best_sim, sel = best_sim.topk(k, dim=1)
                best_idx = best_idx.gather(1, sel)
        # a final sort keeps "most similar first" also when only one key block was scanned
        best_sim, sel = best_sim.sort(dim=1, descending=True)
        out_sim[qs:qs + len(qi)] = best_sim[:, :k]
        out_idx[qs:qs + len(qi)] = best_idx.gather(1, sel)[:, :k]
    return out_idx, out_sim


@torch.no_grad()
def knn_cosine_self_first(features: torch.Tensor,
                          k: int = 7,
                          queries: Optional[Union[torch.Tensor, slice]] = None,
                          query_chunk: int = 1024,
                          key_chunk: int = 65536) -> Tuple[torch.Tensor, torch.Tensor]:
    """STEGO-layout table: column 0 the query itself, then its ``k - 1`` nearest other rows.

    The released CoTAP neighbour files (STEGO's ``precompute_knns``: top-k of all rows, the query
    included) have the image itself in column 0; here that column is put there explicitly, so exact
    duplicates of an image (cosine 1 as well) never displace it.

    Args:
        features (Tensor): ``[N, D]`` features.
        k (int): columns per query, the query itself included, ``2 <= k <= N``. Defaults to 7
            (the released columns 0-6).
        queries, query_chunk, key_chunk: see :func:`knn_cosine`.

    Returns:
        tuple[Tensor, Tensor]: ``indices`` int64 ``[Q, k]`` (column 0 = the query's own row) and
        ``similarities`` float32 ``[Q, k]`` (column 0 = the query's cosine with itself: 1, or 0 for
        an all-zero feature).
    """
    if not isinstance(features, torch.Tensor) or features.ndim != 2:
        got = (tuple(features.shape) if isinstance(features, torch.Tensor) else
               type(features).__name__)
        raise ValueError(f'features must be a [N, D] tensor, got {got}')
    n = features.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= n:
        raise ValueError(f'k must be an int in [2, {n}] for N={n} features with the image itself '
                         f'in column 0, got {k!r}')
    idx, sim = knn_cosine(features, k - 1, queries=queries, query_chunk=query_chunk,
                          key_chunk=key_chunk, exclude_self=True)
    q_idx = _query_rows(queries, n, features.device)
    normed = torch.nn.functional.normalize(features[q_idx].float(), dim=1)
    self_sim = (normed * normed).sum(1, keepdim=True)
    return torch.cat([q_idx[:, None], idx], 1), torch.cat([self_sim, sim], 1)


def _check_suffix(path: str) -> str:
    suffix = osp.splitext(path)[1].lower()
    if suffix not in NEIGHBOR_FILE_SUFFIXES:
        raise ValueError(f'neighbour file {path}: unsupported suffix {suffix!r}, expected one of '
                         f'{NEIGHBOR_FILE_SUFFIXES}')
    return suffix


def _validate(path: str, img_paths: Any, neighbors: Any, similarities: Any,
              meta: Any) -> NeighborTable:
    """Check the contents of a neighbour file; errors name ``path`` and the problem."""
    where = f'neighbour file {path}'
    img_paths = np.asarray(img_paths)
    if img_paths.ndim != 1 or (img_paths.size and img_paths.dtype.kind not in 'U'):
        raise ValueError(f'{where}: img_paths must be a 1-D list of strings, got dtype '
                         f'{img_paths.dtype} and shape {img_paths.shape}')
    paths = [str(p) for p in img_paths.tolist()]
    n = len(paths)
    if n < 2:
        raise ValueError(f'{where}: needs at least 2 images, got {n}')
    if len(set(paths)) != n:
        seen, dup = set(), None
        for p in paths:
            if p in seen:
                dup = p
                break
            seen.add(p)
        raise ValueError(f'{where}: img_paths must be unique, {dup!r} appears more than once')
    nb = np.asarray(neighbors)
    if nb.ndim != 2 or nb.shape[0] != n or nb.shape[1] < 1:
        raise ValueError(f'{where}: neighbors must be [N, k] with N={n} (len(img_paths)) and '
                         f'k >= 1, got shape {nb.shape}')
    if nb.dtype.kind not in 'iu':
        raise ValueError(f'{where}: neighbors must hold integers, got dtype {nb.dtype}')
    nb = nb.astype(np.int64)
    if nb.min() < 0 or nb.max() >= n:
        raise ValueError(f'{where}: neighbors must be indices in [0, {n}), got range '
                         f'[{int(nb.min())}, {int(nb.max())}]')
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise ValueError(f'{where}: meta must be a JSON object, got {type(meta).__name__}')
    includes_self = meta.get('includes_self', False)
    if not isinstance(includes_self, bool):
        raise ValueError(f"{where}: meta['includes_self'] must be true or false, got "
                         f'{includes_self!r}')
    own = np.arange(n)
    if includes_self:
        if nb.shape[1] < 2:
            raise ValueError(f"{where}: meta['includes_self'] is true, so column 0 is the image "
                             f'itself and k must be >= 2 (at least one other image), got k='
                             f'{nb.shape[1]}')
        bad = np.nonzero(nb[:, 0] != own)[0]
        if len(bad):
            raise ValueError(f"{where}: meta['includes_self'] is true but column 0 of row "
                             f'{int(bad[0])} ({paths[bad[0]]!r}) is {int(nb[bad[0], 0])}, not the '
                             f'image itself ({len(bad)} such rows)')
    others = nb[:, 1:] if includes_self else nb
    self_rows = np.nonzero((others == own[:, None]).any(1))[0]
    if len(self_rows):
        where_col = 'in a column other than 0' if includes_self else (
            "as a neighbour (meta['includes_self'] is not true)")
        raise ValueError(f'{where}: image {int(self_rows[0])} ({paths[self_rows[0]]!r}) lists '
                         f'itself {where_col}')
    sim = np.asarray(similarities)
    if sim.shape != nb.shape:
        raise ValueError(f'{where}: similarities must have the shape of neighbors {nb.shape}, '
                         f'got {sim.shape}')
    if sim.dtype.kind not in 'fiu' or not np.isfinite(sim).all():
        raise ValueError(f'{where}: similarities must be finite numbers, got dtype {sim.dtype}')
    return NeighborTable(paths, nb, sim.astype(np.float32), meta)


def write_neighbors(path: str,
                    img_paths: Sequence[str],
                    neighbors: Union[np.ndarray, torch.Tensor],
                    similarities: Union[np.ndarray, torch.Tensor],
                    meta: Optional[Dict[str, Any]] = None) -> str:
    """Validate and write a neighbour file (``.npz`` or ``.json``, by suffix).

    Args:
        path (str): output file; its directory is created.
        img_paths (Sequence[str]): ``N`` unique paths relative to the data root.
        neighbors (np.ndarray | Tensor): int ``[N, k]``.
        similarities (np.ndarray | Tensor): float ``[N, k]``.
        meta (dict, optional): JSON-serialisable description. Defaults to None.

    Returns:
        str: ``path``.
    """
    suffix = _check_suffix(path)
    if isinstance(neighbors, torch.Tensor):
        neighbors = neighbors.cpu().numpy()
    if isinstance(similarities, torch.Tensor):
        similarities = similarities.float().cpu().numpy()
    paths = [str(p).replace(os.sep, '/') for p in img_paths]
    table = _validate(path, np.asarray(paths, dtype=str), neighbors, similarities, meta)
    if osp.dirname(path):
        os.makedirs(osp.dirname(path), exist_ok=True)
    tmp = path + '.tmp' + suffix
    if suffix == '.npz':
        with open(tmp, 'wb') as f:
            np.savez(f, img_paths=np.asarray(table.img_paths, dtype=str),
                     neighbors=table.neighbors, similarities=table.similarities,
                     meta=np.asarray(json.dumps(table.meta)))
    else:
        with open(tmp, 'w') as f:
            json.dump(dict(img_paths=table.img_paths, neighbors=table.neighbors.tolist(),
                           similarities=table.similarities.tolist(), meta=table.meta), f)
    os.replace(tmp, path)  # never leave a half-written file under the final name
    return path


def read_neighbors(path: str) -> NeighborTable:
    """Read and validate a neighbour file written by :func:`write_neighbors`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unsupported suffix, unreadable file, missing key or invalid contents; the
            message names ``path`` and what is wrong.
    """
    suffix = _check_suffix(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'neighbour file {path} does not exist; compute it with '
                                'tools/misc/compute_neighbors.py')
    required = ('img_paths', 'neighbors', 'similarities')
    try:
        if suffix == '.npz':
            with np.load(path, allow_pickle=False) as data:
                content = {key: data[key] for key in data.files}
            if 'meta' in content:
                content['meta'] = json.loads(str(content['meta']))
        else:
            with open(path) as f:
                content = json.load(f)
    except Exception as e:  # corrupt zip / json, pickled objects, ...
        raise ValueError(f'neighbour file {path} could not be read as {suffix}: '
                         f'{type(e).__name__}: {e}') from e
    if not isinstance(content, dict):
        raise ValueError(f'neighbour file {path}: expected an object with keys {required}, got '
                         f'{type(content).__name__}')
    missing = [key for key in required if key not in content]
    if missing:
        raise ValueError(f'neighbour file {path}: missing key(s) {missing}; found '
                         f'{sorted(content)}')
    img_paths = content['img_paths']
    if suffix == '.json':
        if not isinstance(img_paths, list) or not all(isinstance(p, str) for p in img_paths):
            raise ValueError(f'neighbour file {path}: img_paths must be a list of strings')
        img_paths = np.asarray(img_paths, dtype=str)
        try:
            nb = np.asarray(content['neighbors'])
            sim = np.asarray(content['similarities'], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f'neighbour file {path}: neighbors / similarities must be '
                             f'rectangular numeric arrays ({e})') from e
    else:
        nb, sim = content['neighbors'], content['similarities']
    return _validate(path, img_paths, nb, sim, content.get('meta'))


def relative_key(img_path: str, data_root: str = '') -> str:
    """The key of ``img_path`` in a neighbour file: relative to ``data_root``, ``/``-separated.

    Args:
        img_path (str): image path as the dataset stores it (usually ``data_root`` joined with
            the prefix and file name).
        data_root (str): the data root. Defaults to '' (``img_path`` normalised as is).
    """
    if data_root:
        rel = osp.relpath(img_path, data_root)
    else:
        rel = osp.normpath(img_path)
    return rel.replace(os.sep, '/')


def neighbor_index_table(table: NeighborTable,
                         keys: Sequence[str],
                         strict: bool = True,
                         path: str = '<neighbour table>') -> np.ndarray:
    """Map a neighbour table onto a dataset's own indices.

    Args:
        table (NeighborTable): the file's contents.
        keys (Sequence[str]): the dataset's image keys in dataset order (:func:`relative_key`).
        strict (bool): if True, every listed neighbour must be in the dataset; if False,
            neighbours that are not (e.g. the dataset is a subset) are dropped (``-1``), but every
            image must keep at least one. Defaults to True.
        path (str): file name used in error messages.

    Returns:
        np.ndarray: int64 ``[len(keys), k]``, row ``i`` the dataset indices of image ``i``'s
        neighbours, ``-1`` for dropped ones.

    Raises:
        KeyError: an image of the dataset is not in the table.
        ValueError: a neighbour is not in the dataset (``strict``), or an image has none left.
    """
    row_of = {p: r for r, p in enumerate(table.img_paths)}
    rows = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        r = row_of.get(key)
        if r is None:
            raise KeyError(f'neighbour file {path}: image {key!r} (dataset index {i}) is not '
                           f'listed; the file has {len(table)} images (e.g. '
                           f'{table.img_paths[0]!r}). Paths are matched relative to the data '
                           'root; recompute the file for this image list.')
        rows[i] = r
    del row_of
    # table row -> dataset index (-1 = not in the dataset)
    index_of_row = np.full(len(table), -1, dtype=np.int64)
    index_of_row[rows] = np.arange(len(keys), dtype=np.int64)
    out = index_of_row[table.neighbors[rows]]
    bad = np.nonzero(out < 0)
    if len(bad[0]):
        i, j = int(bad[0][0]), int(bad[1][0])
        missing = table.img_paths[table.neighbors[rows[i], j]]
        if strict:
            raise ValueError(f'neighbour file {path}: neighbour {missing!r} of image {keys[i]!r} '
                             f'is not in the dataset ({len(bad[0])} such neighbours); use the '
                             'full image list or strict_neighbors=False to drop them')
        empty = np.nonzero((out < 0).all(1))[0]
        if len(empty):
            raise ValueError(f'neighbour file {path}: none of the neighbours of image '
                             f'{keys[int(empty[0])]!r} is in the dataset ({len(empty)} such '
                             'images)')
    return out


def neighbor_candidates(indices: np.ndarray,
                        num_neighbors: Optional[int] = 7,
                        includes_self: bool = False,
                        exclude_self: bool = False,
                        path: str = '<neighbour table>') -> np.ndarray:
    """The columns a partner is drawn from, uniformly (:func:`sample_neighbor`).

    Released CoTAP draws uniformly from columns 0-6 of a STEGO table, column 0 being the image
    itself (``num_neighbors=7``, ``exclude_self=False``). ``exclude_self=True`` drops that column
    first (the image is then never its own partner); a table without a self column is unchanged by
    it.

    Args:
        indices (np.ndarray): int ``[N, k]`` from :func:`neighbor_index_table` (``-1`` = dropped).
        num_neighbors (int, optional): draw among the first ``num_neighbors`` remaining columns;
            None = all of them. Defaults to 7 (released).
        includes_self (bool): column 0 of ``indices`` is the image itself
            (:attr:`NeighborTable.includes_self`). Defaults to False.
        exclude_self (bool): drop the self column. Defaults to False (released).
        path (str): file name used in error messages.

    Returns:
        np.ndarray: int64 ``[N, m]`` candidate dataset indices, ``-1`` for dropped ones.

    Raises:
        ValueError: ``num_neighbors`` is not a positive int or exceeds the available columns, or
            an image has no valid candidate left.
    """
    cols = indices[:, 1:] if (includes_self and exclude_self) else indices
    if num_neighbors is not None:
        if isinstance(num_neighbors, bool) or not isinstance(num_neighbors, int) \
                or num_neighbors < 1:
            raise ValueError(f'num_neighbors must be a positive int or None, got '
                             f'{num_neighbors!r}')
        if cols.shape[1] < num_neighbors:
            what = ' after dropping the self column (exclude_self=True)' if (
                includes_self and exclude_self) else ''
            raise ValueError(f'neighbour file {path}: num_neighbors={num_neighbors} needs at '
                             f'least {num_neighbors} columns, the file has {cols.shape[1]}{what}; '
                             'recompute it with a larger -k or lower num_neighbors')
        cols = cols[:, :num_neighbors]
    empty = np.nonzero((cols < 0).all(1))[0]
    if len(empty):
        raise ValueError(f'neighbour file {path}: dataset image {int(empty[0])} has no candidate '
                         f'left in the {cols.shape[1]} columns drawn from ({len(empty)} such '
                         'images; its neighbours are outside the dataset)')
    return np.ascontiguousarray(cols)


def sample_neighbor(row: np.ndarray, rng: Any = np.random) -> int:
    """Draw one neighbour uniformly among the valid (``>= 0``) entries of ``row``.

    Args:
        row (np.ndarray): int ``[k]`` neighbour indices, ``-1`` = dropped.
        rng: ``np.random.Generator``, ``RandomState`` or the ``np.random`` module (seeded per
            dataloader worker by mmengine). Defaults to ``np.random``.
    """
    valid = row[row >= 0]
    if len(valid) == 0:
        raise ValueError(f'no valid neighbour in {row.tolist()}')
    if isinstance(rng, np.random.Generator):
        return int(valid[rng.integers(len(valid))])
    return int(valid[rng.randint(len(valid))])

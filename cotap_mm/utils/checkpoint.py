"""Checkpoint loading under torch >= 2.6 (``weights_only=True``) for mmengine 0.10.7.

The problem (``../shared/design/STACK.md``, trap 1): mmengine calls ``torch.load`` without
``weights_only``; torch 2.14 then refuses mmengine's own full checkpoints because their
``message_hub`` holds ``HistoryBuffer`` objects and numpy arrays. Turning ``weights_only`` off for the
whole process (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``) would let any checkpoint run arbitrary code.

What this module does instead:

* **Writing**: :func:`to_plain` turns the non-plain parts of a checkpoint (``HistoryBuffer``, numpy
  arrays and scalars) into plain dicts, lists, numbers and tensors, tagged with ``'__cotap_type__'``;
  :func:`from_plain` restores them. :class:`~cotap_mm.engine.hooks.PlainCheckpointHook` applies them
  in ``before_save_checkpoint`` / ``after_load_checkpoint``, so the checkpoints this project writes
  load with ``weights_only=True`` and ``--resume`` works out of the box.
* **Reading**: :func:`install_safe_local_loader` replaces mmengine's local-file loader (used by
  ``resume``, ``load_from``, ``init_cfg=dict(type='Pretrained')`` and mmseg/mmdet alike) by
  :func:`safe_load_from_local`, which always uses ``weights_only=True`` and, when a file carries a
  pickled object, raises :class:`UnsafeCheckpointError` naming the file, the offending global and the
  opt-in. The opt-in is per file: :func:`trust_checkpoint` (``--trust-checkpoint FILE`` in
  ``tools/train.py`` / ``tools/test.py``) or the :func:`trusted_checkpoint` context manager.
"""
import contextlib
import os
import os.path as osp
import pickle
import re
from collections import OrderedDict
from typing import Any, Iterator, Optional, Set, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

TYPE_KEY = '__cotap_type__'
_TRUSTED: Set[str] = set()


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds pickled objects that ``weights_only=True`` refuses."""


def _key(path: Union[str, os.PathLike]) -> str:
    return osp.realpath(osp.expanduser(os.fspath(path)))


def trust_checkpoint(path: Union[str, os.PathLike]) -> None:
    """Allow full unpickling (``weights_only=False``) of this one file for the rest of the process.

    Only do this for a file you trust: unpickling can execute arbitrary code.
    """
    _TRUSTED.add(_key(path))


def is_trusted(path: Union[str, os.PathLike]) -> bool:
    return _key(path) in _TRUSTED


@contextlib.contextmanager
def trusted_checkpoint(*paths: Union[str, os.PathLike]) -> Iterator[None]:
    """Context manager: allow full unpickling of exactly these files inside the block."""
    keys = {_key(p) for p in paths}
    added = keys - _TRUSTED
    _TRUSTED.update(added)
    try:
        yield
    finally:
        _TRUSTED.difference_update(added)


def safe_torch_load(filename: Union[str, os.PathLike],
                    map_location: Any = 'cpu') -> Any:
    """``torch.load`` with ``weights_only=True`` unless ``filename`` was explicitly trusted.

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeCheckpointError: the file holds pickled objects beyond tensors and plain containers,
            and was not trusted; the message names the file, the refused global and the opt-in.
    """
    filename = osp.expanduser(os.fspath(filename))
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint file {filename} can not be found.')
    if is_trusted(filename):
        return torch.load(filename, map_location=map_location, weights_only=False)
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        match = re.search(r'Unsupported global: GLOBAL ([\w.]+)', str(e))
        if match is None and 'invalid load key' in str(e):
            raise ValueError(f'{filename} is not a torch checkpoint or is truncated ({e})') from e
        what = f'the pickled global `{match.group(1)}`' if match else 'pickled Python objects'
        raise UnsafeCheckpointError(
            f'Refusing to load checkpoint {filename}: it contains {what}, and loading it would '
            'require full unpickling, which can execute arbitrary code. Checkpoints written by '
            'cotap_mm (with PlainCheckpointHook) and published state_dict-only checkpoints load '
            'safely. If you trust this file, opt in for this file only: pass '
            f'`--trust-checkpoint {filename}` to tools/train.py or tools/test.py, or wrap the load '
            f'in `with cotap_mm.utils.trusted_checkpoint({filename!r}):`. Alternatively convert it '
            'once with tools/model_converters/publish_model.py.') from e
    except (IndexError, EOFError, KeyError, RuntimeError) as e:  # what torch raises on non-checkpoints
        raise ValueError(f'{filename} is not a torch checkpoint or is truncated '
                         f'({type(e).__name__}: {e})') from e


def safe_load_from_local(filename: str, map_location: Any = None) -> Any:
    """Drop-in replacement of mmengine's ``load_from_local`` (registered for local paths)."""
    return safe_torch_load(filename, map_location=map_location)


def install_safe_local_loader() -> None:
    """Route mmengine's local checkpoint loading through :func:`safe_load_from_local`."""
    CheckpointLoader.register_scheme(prefixes='', loader=safe_load_from_local, force=True)


def to_plain(obj: Any) -> Any:
    """Recursively convert a checkpoint part into data that ``weights_only=True`` accepts.

    ``HistoryBuffer`` and numpy arrays become tagged dicts; numpy scalars become Python numbers;
    dicts (``OrderedDict`` kept), lists and tuples are walked; tensors and plain values pass through.
    """
    if isinstance(obj, HistoryBuffer):
        log, count = obj.data
        return {TYPE_KEY: 'HistoryBuffer', 'log_history': to_plain(log),
                'count_history': to_plain(count), 'max_length': int(obj.max_length)}
    if isinstance(obj, np.ndarray):
        return {TYPE_KEY: 'ndarray', 'data': torch.from_numpy(np.ascontiguousarray(obj)),
                'dtype': str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, OrderedDict):
        return OrderedDict((k, to_plain(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, '_fields'):
        return tuple(to_plain(v) for v in obj)
    return obj


def from_plain(obj: Any) -> Any:
    """Inverse of :func:`to_plain`."""
    if isinstance(obj, dict):
        kind: Optional[str] = obj.get(TYPE_KEY) if TYPE_KEY in obj else None
        if kind == 'HistoryBuffer':
            return HistoryBuffer(from_plain(obj['log_history']).tolist(),
                                 from_plain(obj['count_history']).tolist(),
                                 obj['max_length'])
        if kind == 'ndarray':
            return obj['data'].numpy().astype(obj['dtype'], copy=False)
        if kind is not None:
            raise ValueError(f'unknown {TYPE_KEY} {kind!r} in checkpoint')
        items = ((k, from_plain(v)) for k, v in obj.items())
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, '_fields'):
        return tuple(from_plain(v) for v in obj)
    return obj

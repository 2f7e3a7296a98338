"""Checkpoint loading under torch >= 2.6 (``weights_only=True``) for mmengine 0.10.7.

The problem: mmengine calls ``torch.load`` without
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
import zipfile
from collections import OrderedDict
from typing import Any, Iterator, List, Optional, Set, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from .atomic_io import is_temporary

TYPE_KEY = '__cotap_type__'
_TRUSTED: Set[str] = set()


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds pickled objects that ``weights_only=True`` refuses.

    ``blocked_globals`` lists the refused globals (e.g. ``['posix.system']``); the message names
    them too.
    """

    blocked_globals: List[str] = []


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
        if 'invalid load key' in str(e):
            raise ValueError(f'{filename} is not a torch checkpoint or is truncated ({e})') from e
        blocked = blocked_globals(filename, str(e))
        what = ('pickled Python objects' if not blocked else
                f"the pickled global{'s' if len(blocked) > 1 else ''} "
                + ', '.join(f'`{g}`' for g in blocked))
        err = UnsafeCheckpointError(
            f'Refusing to load checkpoint {filename}: it contains {what}, and loading it would '
            'require full unpickling, which can execute arbitrary code. Checkpoints written by '
            'cotap_mm (with PlainCheckpointHook) and published state_dict-only checkpoints load '
            'safely. If you trust this file, opt in for this file only: pass '
            f'`--trust-checkpoint {filename}` to tools/train.py or tools/test.py, or wrap the load '
            f'in `with cotap_mm.utils.trusted_checkpoint({filename!r}):`. Alternatively convert it '
            'once with tools/model_converters/publish_model.py.')
        err.blocked_globals = blocked
        raise err from e
    except (IndexError, EOFError, KeyError, RuntimeError) as e:  # what torch raises on non-checkpoints
        raise ValueError(f'{filename} is not a torch checkpoint or is truncated '
                         f'({type(e).__name__}: {e})') from e


def load_checkpoint_file(filename: Union[str, os.PathLike], trust: bool = False,
                         map_location: Any = 'cpu') -> Any:
    """:func:`safe_torch_load`; ``trust=True`` (a tool's ``--trust-checkpoint``) fully unpickles
    this one file."""
    if trust:
        with trusted_checkpoint(filename):
            return safe_torch_load(filename, map_location=map_location)
    return safe_torch_load(filename, map_location=map_location)


def blocked_globals(filename: str, message: str = '') -> List[str]:
    """Every global a ``weights_only=True`` load of ``filename`` refuses.

    Read from the pickle opcodes without executing anything
    (``torch.serialization.get_unsafe_globals_in_checkpoint``); when that cannot parse the file,
    the names quoted in the unpickler's ``message``.
    """
    try:
        found = list(torch.serialization.get_unsafe_globals_in_checkpoint(filename))
    except Exception:  # an unreadable or legacy-format file: fall back to the error text
        found = []
    if not found:
        found = re.findall(r'GLOBAL ([\w.]+)', message)
    return list(dict.fromkeys(found))


def checkpoint_problem(filename: Union[str, os.PathLike]) -> Optional[str]:
    """Why ``filename`` is not an intact checkpoint, or None when it is.

    A torch zip checkpoint is intact when its archive directory is readable and every member's CRC
    matches (one sequential read, nothing unpickled); a legacy-format file must load with
    :func:`safe_torch_load`. Unsafe pickles are refused later, on load, not reported here.
    """
    filename = os.fspath(filename)
    if not osp.isfile(filename):
        return 'missing'
    if osp.getsize(filename) == 0:
        return 'empty (0 bytes)'
    if zipfile.is_zipfile(filename):
        try:
            with zipfile.ZipFile(filename) as z:
                if not any(n.endswith('data.pkl') for n in z.namelist()):
                    return 'not a torch checkpoint (no data.pkl in the archive)'
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as e:
            return f'corrupt archive ({type(e).__name__}: {e})'
        return None if bad is None else f'corrupt member {bad} (CRC mismatch)'
    try:
        safe_torch_load(filename)
    except UnsafeCheckpointError:
        return None
    except (ValueError, OSError) as e:
        return f'unreadable ({e})'
    return None


_CKPT_NAME = re.compile(r'^(iter|epoch)_(\d+)\.pth$')


def find_resumable_checkpoint(work_dir: str) -> Tuple[Optional[str], List[Tuple[str, str]]]:
    """The newest intact checkpoint of a work dir, and the newer candidates skipped on the way.

    Candidates: the file named in ``work_dir/last_checkpoint`` and every ``iter_N.pth`` /
    ``epoch_N.pth`` in ``work_dir`` and in that file's folder, newest (largest N) first;
    temporary files of interrupted writes are never candidates.

    Returns:
        tuple: ``(path or None, [(path, why skipped), ...])``. ``last_checkpoint`` itself appears
        in the skipped list when it is empty or names a missing file.
    """
    skipped: List[Tuple[str, str]] = []
    named: Optional[str] = None
    marker = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(marker):
        with open(marker) as f:
            named = f.read().strip() or None
        if named is None:
            skipped.append((marker, 'empty'))
        elif not osp.isfile(named):
            skipped.append((marker, f'names {named}, which does not exist'))
            named = None
    folders = {osp.abspath(work_dir)}
    if named is not None:
        folders.add(osp.dirname(osp.abspath(named)))
    numbered = []
    for folder in sorted(folders):
        for name in os.listdir(folder):
            m = _CKPT_NAME.match(name)
            if m and not is_temporary(name):
                numbered.append((int(m.group(2)), m.group(1) == 'iter', osp.join(folder, name)))
    candidates = [p for _, _, p in sorted(numbered, reverse=True)]
    if named is not None:
        same = [p for p in candidates if osp.abspath(p) == osp.abspath(named)]
        if not same:  # a custom file name: try it first
            candidates.insert(0, named)
    for path in candidates:
        why = checkpoint_problem(path)
        if why is None:
            return path, skipped
        skipped.append((path, why))
    return None, skipped


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

"""Crash-safe file writes: a temporary file in the same folder, flush, fsync, rename.

A reader (or a resumed run) sees either the old complete file or the new complete file, never a
truncated one: ``os.replace`` within one folder is atomic on POSIX file systems, and the data is on
disk (``fsync``) before the name points at it. A crash mid-write leaves only a temporary file named
``.<name>.tmp-<pid>``, which :func:`is_temporary` recognises and resume logic ignores.
"""
import contextlib
import os
import os.path as osp
from typing import Any, Iterator, Union

import torch

__all__ = ['TMP_MARK', 'temporary_path', 'is_temporary', 'fsync_path', 'commit',
           'atomic_write_bytes', 'atomic_write_text', 'atomic_torch_save']

TMP_MARK = '.tmp-'
PathLike = Union[str, os.PathLike]


def temporary_path(path: PathLike) -> str:
    """The temporary name used while ``path`` is written: ``<dir>/.<name>.tmp-<pid>``."""
    path = os.fspath(path)
    return osp.join(osp.dirname(path), f'.{osp.basename(path)}{TMP_MARK}{os.getpid()}')


def is_temporary(name: str) -> bool:
    """Whether a file name is a leftover of an interrupted :func:`commit` write."""
    base = osp.basename(name)
    return base.startswith('.') and TMP_MARK in base


def fsync_path(path: PathLike) -> None:
    """``fsync`` a file or folder by path (a folder: makes a rename in it durable)."""
    flags = os.O_RDONLY | (getattr(os, 'O_DIRECTORY', 0) if osp.isdir(path) else 0)
    try:
        fd = os.open(os.fspath(path), flags)
    except OSError:  # some file systems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(tmp: PathLike, path: PathLike) -> None:
    """Make the complete file ``tmp`` durable and atomically give it the name ``path``."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(osp.dirname(os.path.abspath(os.fspath(path))))


@contextlib.contextmanager
def _atomic_open(path: PathLike, mode: str) -> Iterator[Any]:
    path = os.fspath(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        commit(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with _atomic_open(path, 'wb') as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see the module docstring)."""
    with _atomic_open(path, 'w') as f:
        f.write(text)


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)`` atomically: ``path`` never holds a partial checkpoint."""
    with _atomic_open(path, 'wb') as f:
        torch.save(obj, f)

"""Unreadable images: what counts as one, and the error that names the file.

Large scraped image sets hold a few broken files (zero bytes, truncated downloads, HTML error pages
saved as ``.jpg``). :func:`image_problem` decodes a file the way the training pipeline does
(``mmcv.imfrombytes``, OpenCV) and also fully through Pillow, which refuses truncated files that
some OpenCV builds decode partially; ``tools/misc/check_images.py`` runs it over a folder.
:class:`BadImageError` is what the unlabelled datasets raise for a file the pipeline cannot load.
"""
import io
import os
import os.path as osp
import sys
from typing import List, Optional, Sequence, Tuple

import mmcv
from PIL import Image, UnidentifiedImageError

__all__ = ['BadImageError', 'image_problem', 'list_images', 'scan_images', 'IMAGE_EXTENSIONS']

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


class BadImageError(OSError):
    """An image file cannot be read or decoded; the message names the file."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f'cannot read image {path}: {reason}')
        self.path = path
        self.reason = reason


def image_problem(path: str) -> Optional[str]:
    """Why ``path`` is not a readable image, or None when it decodes completely.

    Args:
        path (str): a local image file.

    Returns:
        str | None: e.g. ``'empty file (0 bytes)'``, ``'not decodable by OpenCV'``,
        ``'truncated or corrupt (...)'``.
    """
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        return f'cannot open ({e.strerror or e})'
    if not data:
        return 'empty file (0 bytes)'
    try:
        img = mmcv.imfrombytes(data, flag='color', backend='cv2')
    except Exception as e:  # OpenCV raises cv2.error on some inputs
        return f'not decodable by OpenCV ({type(e).__name__}: {e})'
    if img is None or img.size == 0:
        return 'not decodable by OpenCV (not an image, or corrupt)'
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except UnidentifiedImageError:
        pass  # a format Pillow does not know, but OpenCV decoded it
    except (OSError, ValueError, SyntaxError) as e:
        return f'truncated or corrupt ({e})'
    return None


def list_images(root: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[str]:
    """Every file under ``root`` (recursively, sorted) whose extension is in ``extensions``."""
    if not osp.isdir(root):
        raise FileNotFoundError(f'{root} is not a folder')
    exts = tuple(e.lower() for e in extensions)
    found = []
    for folder, _, files in os.walk(root, followlinks=True):
        found.extend(osp.join(folder, f) for f in files if f.lower().endswith(exts))
    return sorted(found)


def _check(path: str) -> Tuple[str, Optional[str]]:
    return path, image_problem(path)


def scan_images(paths: Sequence[str], workers: int = 1,
                progress: bool = True) -> List[Tuple[str, str]]:
    """``(path, why)`` of every unreadable image in ``paths``, in their order.

    Args:
        paths (Sequence[str]): image files.
        workers (int): processes decoding in parallel. Defaults to 1.
        progress (bool): show MMEngine's progress bar. Defaults to True.
    """
    from mmengine.utils import track_iter_progress, track_parallel_progress
    if workers > 1 and len(paths) > 1:
        results = track_parallel_progress(
            _check, list(paths), nproc=workers, chunksize=16, keep_order=True,
            file=sys.stdout) if progress else _pool_map(paths, workers)
    else:
        it = track_iter_progress(list(paths), file=sys.stdout) if progress else paths
        results = [_check(p) for p in it]
    return [(p, why) for p, why in results if why is not None]


def _pool_map(paths: Sequence[str], workers: int) -> List[Tuple[str, Optional[str]]]:
    from multiprocessing import Pool
    with Pool(workers) as pool:
        return pool.map(_check, list(paths), chunksize=16)

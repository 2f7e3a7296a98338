"""Generated images in the on-disk layout of CoTAP's released runs, with their neighbour files.

:func:`write_paper_data` writes what the released configs (``configs/cotap/``) and mmpretrain's
ImageNet configs read, under one root (the configs' ``data/``)::

    ROOT/coco/train2017/000000000000.jpg ...
    ROOT/coco/knn/train2017_k7.npz                   (COCO_NN; any path with ``coco_nn``)
    ROOT/imagenet/train/n01440764/n01440764_0.JPEG ... (two class folders)
    ROOT/imagenet/meta/train.txt                     (mmpretrain's list: ``wnid/file label``)
    ROOT/imagenet/knn/train_k7.npz                   (IMAGENET_NN)

The neighbour files are valid k-NN tables of random features, written with
:func:`cotap_mm.datasets.neighbors.write_neighbors` like ``tools/misc/compute_neighbors.py`` does.
Used by the tests and by ``tools/benchmarks/bench_step.py`` (no download needed).
"""
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .neighbors import knn_cosine_self_first, read_neighbors, write_neighbors

__all__ = ['COCO_NN', 'IMAGENET_NN', 'IMAGENET_WNIDS', 'write_paper_data']

# relative to each data root, like the real files (the configs' defaults point to data/...)
COCO_NN = 'knn/train2017_k7.npz'
IMAGENET_NN = 'knn/train_k7.npz'
IMAGENET_WNIDS = ('n01440764', 'n01443537')


def _image(rng: np.random.Generator, height: int, width: int, photo_like: bool) -> np.ndarray:
    if not photo_like:  # white noise: the worst case for JPEG decoding
        return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    # smooth colour fields plus mild grain: JPEG sizes and decode times closer to photos'
    low = rng.integers(0, 256, size=(max(2, height // 32), max(2, width // 32), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC), dtype=np.float32)
    img += rng.normal(0, 6, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_images(folder: str, names: Sequence[str], rng: np.random.Generator, size: int,
                  width: Optional[int], photo_like: bool) -> None:
    os.makedirs(folder, exist_ok=True)
    for i, name in enumerate(names):
        arr = _image(rng, size, (width or size) + 8 * (i % 3), photo_like)
        Image.fromarray(arr).save(osp.join(folder, name), format='JPEG')


def _neighbour_file(path: str, rel_paths: List[str], k: int, seed: int) -> str:
    """The image itself + its k - 1 nearest neighbours of random features, as the released
    neighbour files (and ``compute_neighbors.py`` by default) lay them out."""
    feats = torch.from_numpy(np.random.default_rng(seed).standard_normal((len(rel_paths), 16)))
    idx, sim = knn_cosine_self_first(feats.float(), k=k)
    return write_neighbors(path, rel_paths, idx, sim,
                           meta=dict(k=k, includes_self=True, note='generated data'))


def write_paper_data(root: str, num_coco: int = 8, num_imagenet: int = 10, k: int = 7,
                     size: int = 40, seed: int = 0, width: Optional[int] = None,
                     photo_like: bool = False, coco_nn: str = COCO_NN,
                     imagenet_nn: str = IMAGENET_NN) -> Dict[str, object]:
    """COCO train2017 and ImageNet train (two class folders) images plus their k-NN files.

    Args:
        root (str): the folder holding ``coco/`` and ``imagenet/`` (the configs' ``data/``).
        num_coco (int): COCO images. Defaults to 8.
        num_imagenet (int): ImageNet images, alternating between the two class folders.
            Defaults to 10.
        k (int): neighbours per image (must be below both image counts). Defaults to 7.
        size (int): image height in pixels. Defaults to 40.
        seed (int): seed of the pixels and of the neighbour features. Defaults to 0.
        width (int, optional): image width before the per-image offset (0, 8 or 16 pixels);
            None: ``size``. Defaults to None.
        photo_like (bool): smooth images with mild grain instead of white noise. Defaults to
            False.
        coco_nn (str): neighbour file, relative to ``ROOT/coco``. Defaults to :data:`COCO_NN`.
        imagenet_nn (str): neighbour file, relative to ``ROOT/imagenet``. Defaults to
            :data:`IMAGENET_NN`.

    Returns:
        dict: ``coco_root``, ``imagenet_root``, ``coco_nn`` / ``imagenet_nn`` (absolute paths),
        ``coco_files`` / ``imagenet_files`` (paths relative to each root, in file order) and the
        neighbour tables ``coco_neighbors`` / ``imagenet_neighbors`` (``[N, k]`` int arrays).
    """
    if k >= min(num_coco, num_imagenet):
        raise ValueError(f'k={k} needs more than k images per data set')
    rng = np.random.default_rng(seed)
    coco_root, in_root = osp.join(root, 'coco'), osp.join(root, 'imagenet')
    coco_names = [f'{i:012d}.jpg' for i in range(num_coco)]
    _write_images(osp.join(coco_root, 'train2017'), coco_names, rng, size, width, photo_like)
    in_files, meta_lines = [], []
    for c, wnid in enumerate(IMAGENET_WNIDS):
        names = [f'{wnid}_{i}.JPEG' for i in range(c, num_imagenet, 2)]
        _write_images(osp.join(in_root, 'train', wnid), names, rng, size, width, photo_like)
        in_files += [f'train/{wnid}/{n}' for n in names]
        meta_lines += [f'{wnid}/{n} {c}\n' for n in names]
    os.makedirs(osp.join(in_root, 'meta'), exist_ok=True)
    with open(osp.join(in_root, 'meta', 'train.txt'), 'w') as f:
        f.writelines(meta_lines)
    coco_files = [f'train2017/{n}' for n in coco_names]
    coco_nn = _neighbour_file(osp.join(coco_root, coco_nn), coco_files, k, seed + 1)
    in_nn = _neighbour_file(osp.join(in_root, imagenet_nn), in_files, k, seed + 2)
    return dict(coco_root=coco_root, imagenet_root=in_root, coco_nn=coco_nn, imagenet_nn=in_nn,
                coco_files=coco_files, imagenet_files=in_files,
                coco_neighbors=read_neighbors(coco_nn).neighbors,
                imagenet_neighbors=read_neighbors(in_nn).neighbors)

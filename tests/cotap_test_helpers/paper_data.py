"""Tiny on-disk COCO / ImageNet layouts with neighbour files, and shrinkers for the paper configs.

``write_paper_data`` writes what the released CoTAP configs read (``data/coco/train2017/*.jpg``,
``data/imagenet/train/<wnid>/*.JPEG``, one neighbour file per data set in the
released layout (the image itself in column 0), written with
:func:`cotap_mm.datasets.neighbors.write_neighbors`), ``shrink_cotap_data`` points a config's
``train_dataloader`` at it with small crops, ``shrink_cotap_model`` swaps the model for a tiny ViT
that runs on CPU in milliseconds (everything else, e.g. the sources and loss terms, kept).
"""
import os
import os.path as osp
from typing import Dict, List, Sequence

import numpy as np
import torch
from PIL import Image

from cotap_mm.datasets.neighbors import knn_cosine_self_first, read_neighbors, write_neighbors

# relative to each data root, like the real files (the configs' defaults point to data/...)
COCO_NN = 'knn/train2017_k7.npz'
IMAGENET_NN = 'knn/train_k7.npz'


def _write_images(folder: str, names: Sequence[str], rng: np.random.Generator, size: int) -> None:
    os.makedirs(folder, exist_ok=True)
    for i, name in enumerate(names):
        arr = rng.integers(0, 256, size=(size, size + 8 * (i % 3), 3), dtype=np.uint8)
        Image.fromarray(arr).save(osp.join(folder, name), format='JPEG')


def _neighbour_file(path: str, rel_paths: List[str], k: int, seed: int) -> str:
    """The image itself + its k - 1 nearest neighbours of random features: the tool's default."""
    feats = torch.from_numpy(np.random.default_rng(seed).standard_normal((len(rel_paths), 16)))
    idx, sim = knn_cosine_self_first(feats.float(), k=k)
    return write_neighbors(path, rel_paths, idx, sim,
                           meta=dict(k=k, includes_self=True, note='test data'))


def write_paper_data(root: str, num_coco: int = 8, num_imagenet: int = 10, k: int = 7,
                     size: int = 40, seed: int = 0) -> Dict[str, object]:
    """COCO train2017 and ImageNet train (two class folders) images plus their k-NN files.

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
    _write_images(osp.join(coco_root, 'train2017'), coco_names, rng, size)
    in_files = []
    for c, wnid in enumerate(('n01440764', 'n01443537')):
        names = [f'{wnid}_{i}.JPEG' for i in range(c, num_imagenet, 2)]
        _write_images(osp.join(in_root, 'train', wnid), names, rng, size)
        in_files += [f'train/{wnid}/{n}' for n in names]
    coco_files = [f'train2017/{n}' for n in coco_names]
    coco_nn = _neighbour_file(osp.join(coco_root, COCO_NN), coco_files, k, seed + 1)
    in_nn = _neighbour_file(osp.join(in_root, IMAGENET_NN), in_files, k, seed + 2)
    return dict(coco_root=coco_root, imagenet_root=in_root, coco_nn=coco_nn, imagenet_nn=in_nn,
                coco_files=coco_files, imagenet_files=in_files,
                coco_neighbors=read_neighbors(coco_nn).neighbors,
                imagenet_neighbors=read_neighbors(in_nn).neighbors)


def _shrink_pipeline(pipeline: list, global_size: int, local_size: int) -> None:
    views = [t for t in pipeline if t.get('type') == 'GeometricMultiView']
    if len(views) != 1:
        raise ValueError(f'expected one GeometricMultiView in the pipeline, got {pipeline}')
    views[0].update(global_size=global_size, local_size=local_size)


def shrink_cotap_data(cfg, data: Dict[str, object], batch_size: int = 2, global_size: int = 32,
                      local_size: int = 16) -> None:
    """Point ``cfg.train_dataloader`` (``MixedCOCOImageNet`` or ``COCOUnlabeled``) at ``data``.

    Only the data roots, neighbour files, crop sizes, batch size and worker settings change; the
    dataset types, collate function and the rest of the pipeline stay the config's own.
    """
    loader = cfg.train_dataloader
    loader.update(batch_size=batch_size, num_workers=0, persistent_workers=False,
                  pin_memory=False)
    ds = loader.dataset
    subsets = ([(ds.coco, 'coco'), (ds.imagenet, 'imagenet')]
               if ds.type == 'MixedCOCOImageNet' else [(ds, 'coco')])
    for sub, name in subsets:
        sub.data_root = data[f'{name}_root']
        sub.neighbors_file = data[f'{name}_nn']
        sub.serialize_data = False  # mmengine's serialisation runs gc.collect (slow in pytest)
        _shrink_pipeline(sub.pipeline, global_size, local_size)


def shrink_cotap_model(cfg, global_size: int = 32, patch_size: int = 8) -> None:
    """Tiny CoTAP model (embed 32, 2 layers, patch 8) keeping the config's loss terms / sources."""
    grid = global_size // patch_size
    model = cfg.model
    model.backbone = dict(type='CoTAPViT', arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                                                     feedforward_channels=64),
                          img_size=global_size, patch_size=patch_size, drop_path_rate=0.)
    model.neck.num_prototypes = 4
    for head in (model.patch_head, model.cls_head):
        head.update(hidden_channels=32, bottleneck_channels=16, num_prototypes=16)
    model.patch_queue.size = 64
    model.cls_queue.size = 16
    model.pool_scales = (grid // 2, grid)
    model.topk = 2
    model.num_random = 1
    model.fg_cfg = dict(keep_mass=0.6, blur_kernel=3, blur_sigma=0.6, min_component_size=1)
    model.patch_cluster_loss.roi_size = 2
    model.bank_size = 8
    model.bank_samples_per_step = 4
    model.kmeans_iters = 5

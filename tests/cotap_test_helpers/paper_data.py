"""Tiny on-disk COCO / ImageNet layouts with neighbour files, and shrinkers for the paper configs.

``write_paper_data`` (:mod:`cotap_mm.datasets.paper_layout`) writes what the released CoTAP configs
read (``data/coco/train2017/*.jpg``, ``data/imagenet/train/<wnid>/*.JPEG``, one k-NN file per data
set written with :func:`cotap_mm.datasets.neighbors.write_neighbors`), ``shrink_cotap_data`` points
a config's ``train_dataloader`` at it with small crops, ``shrink_cotap_model`` swaps the model for a
tiny ViT that runs on CPU in milliseconds (everything else, e.g. the sources and loss terms, kept).
"""
from typing import Dict

# the generator lives in the package (tools/benchmarks/bench_step.py writes the same layout)
from cotap_mm.datasets.paper_layout import COCO_NN, IMAGENET_NN, write_paper_data  # noqa: F401


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

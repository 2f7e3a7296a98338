"""Pictures of the dense features during pretraining (PCA as RGB, similarity map of one patch,
k-means maps) of a fixed set of images: generated scenes, a folder, or the training data."""
import glob
import os.path as osp
from typing import List, Optional, Sequence

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmpretrain.registry import HOOKS

from cotap_mm.datasets.synthetic_scenes import generate_scene, scene_seed
from cotap_mm.evaluation.linear_probe import build_model_feature_extractor
from cotap_mm.evaluation.visualization import feature_panels, save_panels

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


def folder_images(folder: str, num: int) -> List[str]:
    """The first ``num`` image files of ``folder`` (sorted names, not recursive)."""
    if not osp.isdir(folder):
        raise FileNotFoundError(f'FeatureVisualizationHook: image_dir {folder!r} is not a folder')
    files = sorted(p for p in glob.glob(osp.join(folder, '*'))
                   if p.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f'FeatureVisualizationHook: no image '
                                f'({", ".join(IMAGE_EXTENSIONS)}) in {folder!r}')
    return files[:num]


def dataset_images(dataset, num: int) -> List[str]:
    """The ``img_path`` of the first ``num`` items of ``dataset``, or of the first data set it wraps
    (``datasets`` of a mixed / concatenated data set, ``dataset`` of a repeat wrapper) that has
    image files."""
    queue = [dataset]
    while queue:
        d = queue.pop(0)
        if hasattr(d, 'get_data_info') and len(d) > 0 and 'img_path' in d.get_data_info(0):
            return [d.get_data_info(i)['img_path'] for i in range(min(num, len(d)))]
        queue.extend(getattr(d, 'datasets', []))
        if getattr(d, 'dataset', None) is not None:
            queue.append(d.dataset)
    raise ValueError(f'FeatureVisualizationHook(from_train_data=True): the training data '
                     f'({type(dataset).__name__}) has no image files (img_path); generated data '
                     f'is drawn by default (from_train_data=False), a folder with image_dir=...')


def load_images(paths: Sequence[str], size: int) -> np.ndarray:
    """RGB uint8 ``[N, size, size, 3]``: every file resized (squashed) to ``size`` x ``size``."""
    import mmcv
    out = []
    for path in paths:
        img = mmcv.imread(path, channel_order='rgb')
        if img is None:
            raise ValueError(f'FeatureVisualizationHook: cannot read the image {path!r}')
        out.append(mmcv.imresize(img, (size, size)))
    return np.stack(out).astype(np.uint8)


@HOOKS.register_module()
class FeatureVisualizationHook(Hook):
    """Every ``interval`` iterations (and after the last), write feature pictures of fixed images.

    The images stay the same all run long, so the pictures show how the features evolve: by default
    ``num_images`` generated scenes (fixed by ``seed``); ``image_dir`` takes the first image files
    of a folder, ``from_train_data=True`` the first images of the training data set (real images are
    resized to ``image_size``). For each image a PNG ``image | PCA of the patch features as RGB |
    cosine similarity of the centre patch to all patches | k-means map for each K of kmeans_k`` is
    written to ``{work_dir}/{out_dir}/iter_{k}_img{i}.png`` on the main process and, with
    ``add_to_visualizer``, given to the runner's visualizer as ``{out_dir}_img{i}`` at step ``k``
    (so a TensorBoard / W&B backend shows them next to the losses). Features: those of
    :func:`~cotap_mm.evaluation.linear_probe.build_model_feature_extractor` (CoTAP's 2C-dim
    filtered tokens, or the backbone's last-layer patch tokens).

    Args:
        interval (int): iterations between two sets of pictures. Defaults to 1000.
        num_images (int): images per set. Defaults to 4.
        image_size (int): image side in pixels. Defaults to 64.
        seed (int): seed of the generated images and of k-means. Defaults to 0.
        out_dir (str): sub-folder of the work dir. Defaults to 'feature_vis'.
        image_dir (str, optional): a folder of images to draw instead. Defaults to None.
        from_train_data (bool): draw the training data's first images. Defaults to False.
        kmeans_k (Sequence[int]): numbers of clusters of the k-means maps (the overclustering maps
            of one image); empty: none. Defaults to (4, 8).
        add_to_visualizer (bool): also send each picture to ``runner.visualizer.add_image``.
            Defaults to True.
    """

    priority = 'LOW'

    def __init__(self, interval: int = 1000, num_images: int = 4, image_size: int = 64,
                 seed: int = 0, out_dir: str = 'feature_vis', image_dir: Optional[str] = None,
                 from_train_data: bool = False, kmeans_k: Sequence[int] = (4, 8),
                 add_to_visualizer: bool = True) -> None:
        if interval < 1 or num_images < 1 or image_size < 8:
            raise ValueError(f'FeatureVisualizationHook needs interval >= 1, num_images >= 1, '
                             f'image_size >= 8; got {interval}, {num_images}, {image_size}')
        if image_dir is not None and from_train_data:
            raise ValueError('FeatureVisualizationHook: give image_dir or from_train_data=True, '
                             'not both')
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in kmeans_k):
            raise ValueError(f'FeatureVisualizationHook: kmeans_k must be positive ints, got '
                             f'{kmeans_k!r}')
        self.interval = interval
        self.out_dir = out_dir
        self.seed = seed
        self.kmeans_k = tuple(kmeans_k)
        self.num_images = num_images
        self.image_size = image_size
        self.from_train_data = from_train_data
        self.add_to_visualizer = add_to_visualizer
        self.images: Optional[np.ndarray] = None
        if image_dir is not None:
            self.images = load_images(folder_images(image_dir, num_images), image_size)
        elif not from_train_data:
            self.images = np.stack([
                generate_scene(scene_seed(seed, 'vis', i), size=image_size)[0]
                for i in range(num_images)])

    def before_train(self, runner) -> None:
        if self.from_train_data and self.images is None and is_main_process():
            paths = dataset_images(runner.train_dataloader.dataset, self.num_images)
            self.images = load_images(paths, self.image_size)
            print_log(f'FeatureVisualizationHook draws {len(paths)} training images: '
                      f'{", ".join(paths)}', logger='current')

    @torch.no_grad()
    def write(self, runner, tag: str, step: int = 0) -> Optional[str]:
        """Write one set of pictures; returns the folder (None on other ranks)."""
        if not is_main_process():
            return None
        if self.images is None:
            raise RuntimeError('FeatureVisualizationHook(from_train_data=True) has no images: '
                               'before_train did not run')
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        extract = build_model_feature_extractor(model)
        feats = extract(torch.from_numpy(self.images).permute(0, 3, 1, 2).float())
        folder = osp.join(runner.work_dir, self.out_dir)
        visualizer = getattr(runner, 'visualizer', None) if self.add_to_visualizer else None
        for i, (img, f) in enumerate(zip(self.images, feats.cpu())):
            panels = feature_panels(img, f, kmeans_k=self.kmeans_k, seed=self.seed)
            canvas = save_panels(osp.join(folder, f'{tag}_img{i}.png'), panels)
            if visualizer is not None:
                visualizer.add_image(f'{self.out_dir}_img{i}', canvas, step=step)
        return folder

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner):
            self.write(runner, f'iter_{runner.iter + 1}', step=runner.iter + 1)

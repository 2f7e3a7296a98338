"""Pictures of the dense features during pretraining (PCA as RGB, similarity map of one patch)."""
import os.path as osp
from typing import Optional

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmpretrain.registry import HOOKS

from cotap_mm.datasets.synthetic_scenes import generate_scene, scene_seed
from cotap_mm.evaluation.linear_probe import build_model_feature_extractor
from cotap_mm.evaluation.visualization import save_feature_figure


@HOOKS.register_module()
class FeatureVisualizationHook(Hook):
    """Every ``interval`` iterations (and after the last), write feature pictures of fixed images.

    For each of ``num_images`` generated scenes (fixed by ``seed``; the same images all run long, so
    the pictures show how the features evolve) a PNG ``image | PCA of patch features as RGB |
    cosine similarity of the centre patch to all patches`` is written to
    ``{work_dir}/{out_dir}/iter_{k}_img{i}.png`` on the main process. Features: those of
    :func:`~cotap_mm.evaluation.linear_probe.build_model_feature_extractor` (CoTAP's 2C-dim
    filtered tokens, or the backbone's last-layer patch tokens).

    Args:
        interval (int): iterations between two sets of pictures. Defaults to 1000.
        num_images (int): images per set. Defaults to 4.
        image_size (int): generated image side in pixels. Defaults to 64.
        seed (int): seed of the generated images. Defaults to 0.
        out_dir (str): sub-folder of the work dir. Defaults to 'feature_vis'.
    """

    priority = 'LOW'

    def __init__(self, interval: int = 1000, num_images: int = 4, image_size: int = 64,
                 seed: int = 0, out_dir: str = 'feature_vis') -> None:
        if interval < 1 or num_images < 1 or image_size < 8:
            raise ValueError(f'FeatureVisualizationHook needs interval >= 1, num_images >= 1, '
                             f'image_size >= 8; got {interval}, {num_images}, {image_size}')
        self.interval = interval
        self.out_dir = out_dir
        self.images = np.stack([generate_scene(scene_seed(seed, 'vis', i), size=image_size)[0]
                                for i in range(num_images)])

    @torch.no_grad()
    def write(self, runner, tag: str) -> Optional[str]:
        """Write one set of pictures; returns the folder (None on other ranks)."""
        if not is_main_process():
            return None
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        extract = build_model_feature_extractor(model)
        feats = extract(torch.from_numpy(self.images).permute(0, 3, 1, 2).float())
        folder = osp.join(runner.work_dir, self.out_dir)
        for i, (img, f) in enumerate(zip(self.images, feats.cpu())):
            save_feature_figure(osp.join(folder, f'{tag}_img{i}.png'), img, f)
        return folder

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner):
            self.write(runner, f'iter_{runner.iter + 1}')

"""Pictures of a checkpoint's dense features on your own images.

For every image and feature set it writes ``OUT/<image stem>_<set>.png``: the image (query patches
in red) | PCA of the patch features as RGB | cosine similarity of each query patch to every patch |
k-means maps of the patch features (the per-image view of the overclustering protocol), one per
``--kmeans`` K. Feature sets (``cotap_mm.evaluation.frozen_model``): ``C``, the last-layer patch
tokens of the backbone, and, for a checkpoint with CoTAP's object-aware filter (initialised
prototypes), ``2C``, ordinary || filtered tokens, what CoTAP's paper probes. Images go through the
config's ``test_pipeline`` (our configs squash them to the training size).

Examples::

    python tools/analysis_tools/visualize_features.py \
        configs/cotap/cotap_vit-small-p16-dino_4xb28-240k_coco-in1k.py work_dirs/x/iter_240000.pth \
        photo.jpg street.png --out vis --points 120,80 300,200 --kmeans 5 10
    # random initialisation, only the plain tokens, the EMA teacher of a training checkpoint
    python tools/analysis_tools/visualize_features.py CONFIG none img.jpg --out vis --features C
    python tools/analysis_tools/visualize_features.py CONFIG CKPT img.jpg --out vis --branch teacher
"""
import argparse
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.dataset import Compose
from mmengine.logging import MMLogger, print_log

import cotap_mm  # noqa: F401  (registers the modules)
from cotap_mm.evaluation.frozen_model import dense_feature_extractors, load_frozen_model
from cotap_mm.evaluation.visualization import feature_panels, grid_point, save_panels


def parse_point(text: str) -> Tuple[float, float]:
    """``'X,Y'`` (pixels of the original image) -> ``(x, y)``."""
    try:
        x, y = (float(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'a point is X,Y in pixels of the image, got {text!r}')
    return x, y


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='PCA, similarity and k-means pictures of dense '
                                'features of your own images')
    p.add_argument('config', help='mmpretrain config of the model (with test_pipeline)')
    p.add_argument('checkpoint', help="checkpoint file, or 'none' for random initialisation")
    p.add_argument('images', nargs='+', help='image files')
    p.add_argument('--out', required=True, help='folder for the PNGs')
    p.add_argument('--points', nargs='+', type=parse_point, default=[], metavar='X,Y',
                   help='query pixels of the similarity maps (default: the central patch)')
    p.add_argument('--kmeans', nargs='*', type=int, default=[4, 8], metavar='K',
                   help='numbers of clusters of the k-means maps (default: 4 8; none: no maps)')
    p.add_argument('--features', nargs='+', default=['auto'], choices=['auto', 'C', '2C'],
                   help="feature sets; 'auto': C, plus 2C for a checkpoint with the filter")
    p.add_argument('--branch', default='student', choices=['student', 'teacher'],
                   help='which branch of a training checkpoint (default: student)')
    p.add_argument('--seed', type=int, default=0, help='k-means seed')
    p.add_argument('--min-panel-size', type=int, default=192,
                   help='smaller images are shown enlarged (integer factor, nearest) so that the '
                   'shorter side of a panel has at least this many pixels (default: 192)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override settings in the config, key=value pairs')
    return p.parse_args(argv)


def build_image_pipeline(cfg: Config) -> Compose:
    """The config's ``test_pipeline`` (the transforms of one image)."""
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    if 'test_pipeline' not in cfg:
        raise KeyError(f'{cfg.filename}: no test_pipeline (LoadImageFromFile, Resize, PackInputs) '
                       f'to read the images with')
    from mmpretrain.registry import TRANSFORMS
    return Compose([TRANSFORMS.build(t) for t in cfg.test_pipeline])


def load_image(path: str, pipeline: Compose) -> Tuple[np.ndarray, Tuple[int, int]]:
    """``path`` through the pipeline: uint8 ``[H, W, 3]`` RGB and the original ``(h, w)``."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'image {path!r} not found')
    out = pipeline(dict(img_path=path))
    inputs = out['inputs']
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 3 or inputs.shape[0] != 3:
        raise ValueError(f'{path}: test_pipeline must end in PackInputs giving a [3, H, W] '
                         f'image, got {type(inputs).__name__} {getattr(inputs, "shape", "")}')
    rgb = inputs.flip(0).permute(1, 2, 0).numpy().astype(np.uint8)  # loaded as BGR
    return np.ascontiguousarray(rgb), tuple(out['data_samples'].ori_shape)


def enlarge(image: np.ndarray, min_side: int) -> np.ndarray:
    """``image`` repeated by the smallest integer factor giving a shorter side >= ``min_side``."""
    factor = max(1, -(-min_side // min(image.shape[:2])))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def output_names(images: Sequence[str]) -> List[str]:
    """File stems, with the position prefixed where two images share a stem."""
    stems = [osp.splitext(osp.basename(p))[0] for p in images]
    return [f'{i:02d}_{s}' if stems.count(s) > 1 else s for i, s in enumerate(stems)]


def main(argv: Optional[List[str]] = None) -> Dict[str, List[str]]:
    """Write the pictures; returns ``{feature set: [PNG paths]}``."""
    args = parse_args(argv)
    MMLogger.get_instance('visualize_features', log_level='INFO')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    ckpt = None if args.checkpoint.lower() == 'none' else args.checkpoint
    model = load_frozen_model(cfg, ckpt, branch=args.branch, device=args.device)
    extractors = dense_feature_extractors(model, args.features)
    pipeline = build_image_pipeline(cfg)
    written: Dict[str, List[str]] = {name: [] for name in extractors}
    for path, stem in zip(args.images, output_names(args.images)):
        image, ori_hw = load_image(path, pipeline)
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float().to(args.device)
        for name, extract in extractors.items():
            feats = extract(x)[0].float().cpu()
            grid = tuple(feats.shape[1:])
            cells = [grid_point(p, ori_hw, grid) for p in args.points]
            panels = feature_panels(enlarge(image, args.min_panel_size), feats, cells,
                                    args.kmeans, seed=args.seed)
            out = osp.join(args.out, f'{stem}_{name}.png')
            save_panels(out, panels)
            written[name].append(out)
            print_log(f'{path}: {name} features {feats.shape[0]}x{grid[0]}x{grid[1]} -> {out} '
                      f'({", ".join(t for t, _ in panels)})', logger='current')
    return written


if __name__ == '__main__':
    main()

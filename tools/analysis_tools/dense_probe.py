"""Frozen dense linear probe + over-dispersion of an mmpretrain backbone checkpoint.

Builds ``model.backbone`` from the config, loads the checkpoint's ``backbone.*`` weights, extracts
last-layer patch features (``out_type='featmap'``) of probe-training and validation images, fits a
1x1-conv linear probe (logits upsampled bilinearly to the label size, CE, Adam; see
``cotap_mm.evaluation.linear_probe``), reports mIoU / pixel accuracy on validation, and the
over-dispersion statistics (``cotap_mm.evaluation.dispersion``) of the validation patch features.

Examples::

    # generated scenes (default), CHECKPOINT = 'none' for a randomly initialised backbone
    python tools/analysis_tools/dense_probe.py CONFIG work_dirs/x/epoch_100.pth --data synthetic
    # a folder in the ADE20K layout (e.g. written by make_synthetic_scenes.py)
    python tools/analysis_tools/dense_probe.py CONFIG CKPT --data data/synthetic_scenes \
        --num-classes 9 --out-json probe.json --vis-dir probe_vis
"""
import argparse
import glob
import json
import os
import os.path as osp
import time
from typing import Any, Dict, List, Optional, Tuple


import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config, DictAction
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import _load_checkpoint, load_state_dict
from mmengine.utils import import_modules_from_strings

import cotap_mm  # noqa: F401  (registers modules, installs the safe checkpoint loader)
from cotap_mm.evaluation.dense_eval import dense_evaluation, synthetic_probe_data
from cotap_mm.evaluation.linear_probe import (IMAGENET_MEAN, IMAGENET_STD,
                                              build_patch_feature_extractor)
from cotap_mm.evaluation.visualization import save_feature_figure


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='Frozen dense linear probe + dispersion')
    p.add_argument('config', help='mmpretrain (or mmseg) config with model.backbone')
    p.add_argument('checkpoint', help="checkpoint file, or 'none' for random initialisation")
    p.add_argument('--data', default='synthetic',
                   help="'synthetic' (generated in memory) or a folder in the ADE20K layout")
    p.add_argument('--num-train', type=int, default=200, help='synthetic: training images')
    p.add_argument('--num-val', type=int, default=100, help='synthetic: validation images')
    p.add_argument('--max-train', type=int, default=None, help='folder: cap on training images')
    p.add_argument('--max-val', type=int, default=None, help='folder: cap on validation images')
    p.add_argument('--image-size', type=int, default=96,
                   help='side of the (squashed) images fed to the backbone and of the labels')
    p.add_argument('--num-classes', type=int, default=None,
                   help='object classes K of the synthetic scenes (probe has K+1 classes incl. '
                   'background; default 8), or, for a folder, the number of label classes '
                   '(default: from synthetic_scenes.json when present)')
    p.add_argument('--reduce-zero-label', action='store_true',
                   help='folder: labels 0 -> 255 (ignore), others -1 (real ADE20K convention)')
    p.add_argument('--seed', type=int, default=0, help='data seed and probe seed')
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--select', choices=['last', 'best'], default='last',
                   help="report the last epoch's val mIoU or the best one (official CoTAP code)")
    p.add_argument('--flip', action=argparse.BooleanOptionalAction, default=True,
                   help='horizontal flip of the probe training samples, p 0.5 (released CoTAP; '
                   'default); --no-flip: the earlier protocol without')
    p.add_argument('--prefix', default='backbone.',
                   help="checkpoint key prefix of the backbone ('' = keys are the backbone's)")
    p.add_argument('--device', default='cpu')
    p.add_argument('--out-json', default=None, help='write the results here')
    p.add_argument('--vis-dir', default=None, help='write PCA / similarity figures here')
    p.add_argument('--num-vis', type=int, default=4)
    p.add_argument('--log-file', default=None)
    p.add_argument('--trust-checkpoint', action='store_true',
                   help='allow full unpickling (weights_only=False) of CHECKPOINT; only for '
                   'files you trust')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override settings in the config')
    return p.parse_args(argv)


def build_backbone(cfg: Config) -> nn.Module:
    """Build ``cfg.model.backbone`` (its ``init_cfg`` dropped) with mmpretrain's registry."""
    if cfg.get('custom_imports', None):
        import_modules_from_strings(**cfg.custom_imports)
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    model_cfg = cfg.get('model', None)
    if model_cfg is None or 'backbone' not in model_cfg:
        raise KeyError('the config has no model.backbone')
    bb_cfg = dict(model_cfg['backbone'])
    bb_cfg.pop('init_cfg', None)
    return MODELS.build(bb_cfg)


def load_backbone_weights(backbone: nn.Module,
                          checkpoint: str,
                          prefix: str = 'backbone.',
                          logger: Optional[MMLogger] = None) -> Dict[str, int]:
    """Load the ``prefix``-ed weights of ``checkpoint`` into ``backbone`` (non-strict).

    The checkpoint is read through mmengine's ``CheckpointLoader`` (``weights_only=True`` via the
    project's safe loader). Keys are revised as mmengine's ``load_checkpoint(revise_keys=...)``
    would: a leading ``module.`` is dropped; if any key starts with ``prefix``, only those keys are
    kept, with the prefix removed; otherwise the keys are taken as the backbone's own.

    Returns:
        dict: ``loaded`` / ``missing`` / ``unexpected`` key counts.

    Raises:
        ValueError: no checkpoint key matches a backbone parameter.
    """
    ckpt = _load_checkpoint(checkpoint, map_location='cpu', logger=logger)
    sd = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(sd, dict):
        raise ValueError(f'{checkpoint} holds no state dict')
    sd = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in sd.items()}
    if prefix and any(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    own = set(backbone.state_dict())
    matched = own & set(sd)
    if not matched:
        raise ValueError(f'no key of {checkpoint} (prefix {prefix!r}) matches the backbone; '
                         f'e.g. checkpoint key {next(iter(sd), None)!r} vs backbone key '
                         f'{next(iter(own), None)!r}')
    load_state_dict(backbone, sd, strict=False, logger=logger)
    return dict(loaded=len(matched), missing=len(own - set(sd)), unexpected=len(set(sd) - own))


def _folder(root: str, folder: str, cap: Optional[int], size: int,
            reduce_zero_label: bool) -> Tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    img_paths = sorted(glob.glob(osp.join(root, 'images', folder, '*.jpg')))
    if cap is not None:
        img_paths = img_paths[:cap]
    if not img_paths:
        raise FileNotFoundError(f'no images/{folder}/*.jpg under {root}')
    imgs, masks = [], []
    for p in img_paths:
        stem = osp.splitext(osp.basename(p))[0]
        mp = osp.join(root, 'annotations', folder, stem + '.png')
        img = Image.open(p).convert('RGB').resize((size, size), Image.BILINEAR)
        m = np.asarray(Image.open(mp).resize((size, size), Image.NEAREST)).astype(np.uint8)
        if reduce_zero_label:
            m = m.copy()
            m[m == 0] = 255
            m = m - 1
            m[m == 254] = 255
        imgs.append(np.asarray(img))
        masks.append(m)
    return np.stack(imgs), np.stack(masks)


def _format_table(rows: List[Tuple[str, str]]) -> str:
    w = max(len(r[0]) for r in rows)
    w2 = max(len(r[1]) for r in rows)
    line = '+' + '-' * (w + 2) + '+' + '-' * (w2 + 2) + '+'
    out = [line] + [f'| {a.ljust(w)} | {b.rjust(w2)} |' for a, b in rows] + [line]
    return '\n'.join(out)


def _mean_std(cfg: Config) -> Tuple[Any, Any]:
    dp = cfg.get('data_preprocessor', None) or cfg.get('model', {}).get('data_preprocessor', None)
    if dp and dp.get('mean') is not None and dp.get('std') is not None:
        return tuple(dp['mean']), tuple(dp['std'])
    return IMAGENET_MEAN, IMAGENET_STD


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    logger = MMLogger.get_instance(
        f'dense_probe_{time.time_ns()}', logger_name='dense_probe', log_file=args.log_file)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    torch.manual_seed(args.seed)
    backbone = build_backbone(cfg)
    if args.checkpoint.lower() != 'none':
        if args.trust_checkpoint:
            from cotap_mm.utils.checkpoint import trust_checkpoint
            trust_checkpoint(args.checkpoint)
        counts = load_backbone_weights(backbone, args.checkpoint, args.prefix, logger)
        logger.info(f'loaded {counts["loaded"]} backbone tensors from {args.checkpoint} '
                    f'({counts["missing"]} missing, {counts["unexpected"]} unexpected)')
    else:
        logger.info('no checkpoint: randomly initialised backbone')
    backbone.to(args.device)
    backbone.eval()  # (some backbones' train() returns None)
    for prm in backbone.parameters():
        prm.requires_grad_(False)
    mean, std = _mean_std(cfg)
    extract = build_patch_feature_extractor(backbone, mean, std)

    insts = None
    if args.data == 'synthetic':
        k = 8 if args.num_classes is None else args.num_classes
        tr_i, tr_m, _ = synthetic_probe_data('train', args.num_train, args.seed, args.image_size, k)
        va_i, va_m, insts = synthetic_probe_data('val', args.num_val, args.seed, args.image_size, k)
        num_classes = k + 1
    else:
        if not osp.isdir(args.data):
            raise FileNotFoundError(f"--data must be 'synthetic' or a folder, got {args.data}")
        num_classes = args.num_classes
        meta = osp.join(args.data, 'synthetic_scenes.json')
        if num_classes is None and osp.isfile(meta):
            with open(meta) as f:
                num_classes = len(json.load(f)['classes'])
        if num_classes is None:
            raise ValueError('--num-classes is required for a folder without '
                             'synthetic_scenes.json')
        tr_i, tr_m = _folder(args.data, 'training', args.max_train, args.image_size,
                             args.reduce_zero_label)
        va_i, va_m = _folder(args.data, 'validation', args.max_val, args.image_size,
                             args.reduce_zero_label)
    logger.info(f'probe data: {len(tr_i)} train / {len(va_i)} val images of '
                f'{args.image_size}px, {num_classes} classes')

    t0 = time.time()
    res = dense_evaluation(
        extract, (tr_i, tr_m), (va_i, va_m), num_classes, val_instances=insts,
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
        select=args.select, flip=args.flip, device=args.device)
    va_f = res.pop('val_feats')
    disp = res['dispersion']
    n, c, h, w = va_f.shape

    rows = [('mIoU', f'{100 * res["mIoU"]:.2f}'), ('pixel acc', f'{100 * res["pixel_acc"]:.2f}'),
            ('mAcc', f'{100 * res["mAcc"]:.2f}'), ('epoch scored', str(res['epoch']))]
    for key in ('intra', 'inter', 'dispersion', 'intra_instance', 'instance_dispersion'):
        if key in disp:
            rows.append((key, f'{disp[key]:.4f}'))
    for ci, v in enumerate(res['per_class_iou']):
        rows.append((f'IoU class {ci}', 'n/a' if np.isnan(v) else f'{100 * v:.2f}'))
    logger.info(f'dense probe ({time.time() - t0:.1f}s, features {c}x{h}x{w}):\n' +
                _format_table(rows))

    if args.vis_dir:
        for i in range(min(args.num_vis, n)):
            save_feature_figure(osp.join(args.vis_dir, f'val_{i:04d}.png'), va_i[i], va_f[i].cpu())
        logger.info(f'figures written to {args.vis_dir}')

    out = dict(
        mIoU=res['mIoU'],
        pixel_acc=res['pixel_acc'],
        mAcc=res['mAcc'],
        epoch=res['epoch'],
        select=args.select,
        flip=args.flip,
        per_class_iou=[None if np.isnan(v) else float(v) for v in res['per_class_iou']],
        dispersion=disp,
        num_classes=num_classes,
        feature_shape=[c, h, w])
    if args.out_json:
        os.makedirs(osp.dirname(osp.abspath(args.out_json)), exist_ok=True)
        with open(args.out_json, 'w') as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == '__main__':
    main()

"""Reference points for the frozen linear probe on generated scenes: what can it reach at all?

The dense benchmark and the demo score self-supervised models with a frozen linear probe on
generated scenes (:mod:`cotap_mm.evaluation.dense_eval`). To read those numbers one needs the floor
and the ceiling of the same probe on the same data, which this tool measures:

- ``raw pixels``: the 8x8x3 pixels of each patch, normalised (a floor: colour and local layout);
- ``texture statistics``: hand-made local statistics (mean, energy, gradient magnitudes pooled over
  16 px windows), what a texture-aware feature without learning gets;
- ``random ViT``: the demo's tiny ViT (embed 96, 4 layers, patch 8) at random init;
- ``image-level supervised ViT``: the same ViT trained for ``--image-iters`` steps with image-level
  labels only (which classes are present: multi-label binary cross-entropy on the CLS token), on
  generated scenes of other seeds: what an image-level signal, even a perfect one, gives the patch
  tokens at this budget (the image-level start of the demo and the benchmark is compared to it);
- ``supervised ViT``: the same ViT trained for ``--iters`` steps with dense cross-entropy on
  generated scenes with their masks (other seeds than the probe's data): the ceiling an SSL method
  of this size could approach with labels.

    python tools/analysis_tools/probe_references.py --iters 600 --image-iters 1500
"""
import argparse
from typing import List, Optional

import torch
import torch.nn.functional as F

from cotap_mm.apis import presence_labels, tiny_vit, train_supervised  # noqa: F401  (re-exported)
from cotap_mm.evaluation import dense_evaluation, synthetic_probe_data
from cotap_mm.evaluation.linear_probe import normalize_images


def raw_patch_features(x: torch.Tensor, patch: int = 8) -> torch.Tensor:
    """``[B, 3*patch*patch, H/patch, W/patch]``: the normalised pixels of each patch."""
    B, _, H, W = x.shape
    return F.unfold(normalize_images(x), patch, stride=patch).reshape(B, -1, H // patch, W // patch)


def texture_statistics(x: torch.Tensor, window: int = 16, stride: int = 8) -> torch.Tensor:
    """Local mean, energy, |dx|, |dy| and dx*dy of each channel, averaged over ``window`` px."""
    x = normalize_images(x)
    gx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
    gy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    f = torch.cat([x, x ** 2, gx.abs(), gy.abs(), gx * gy], 1)
    return F.avg_pool2d(f, window, stride=stride, padding=(window - stride) // 2)


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--iters', type=int, default=600, help='supervised training steps')
    p.add_argument('--image-iters', type=int, default=1500,
                   help='image-level supervised training steps (0: skip that row)')
    p.add_argument('--train-images', type=int, default=2000, help='supervised training images')
    p.add_argument('--probe-train', type=int, default=300)
    p.add_argument('--probe-val', type=int, default=150)
    p.add_argument('--probe-epochs', type=int, default=60)
    p.add_argument('--probe-lr', type=float, default=1e-2)
    p.add_argument('--image-size', type=int, default=96)
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    k = 8
    torch.manual_seed(args.seed)
    train = synthetic_probe_data('train', args.probe_train, args.seed + 100, args.image_size, k)
    val = synthetic_probe_data('val', args.probe_val, args.seed + 100, args.image_size, k)
    vit = tiny_vit(args.image_size)
    vit.eval()  # mmpretrain backbones' train() returns None: no chaining

    def vit_features(x: torch.Tensor) -> torch.Tensor:
        return vit(normalize_images(x))[0]

    rows = {}
    for name, fn in (('raw pixels', raw_patch_features), ('texture statistics', texture_statistics),
                     ('random ViT', vit_features)):
        rows[name] = dense_evaluation(fn, train[:2], val[:2], k + 1, val_instances=val[2],
                                      epochs=args.probe_epochs, lr=args.probe_lr, seed=args.seed)
    if args.image_iters > 0:
        torch.manual_seed(args.seed)
        image_vit = tiny_vit(args.image_size)
        train_supervised(image_vit, k + 1, args.image_iters, args.image_size, args.train_images,
                         args.seed, image_level=True)
        rows[f'image-level supervised ViT ({args.image_iters} it)'] = dense_evaluation(
            lambda x: image_vit(normalize_images(x))[0], train[:2], val[:2], k + 1,
            val_instances=val[2], epochs=args.probe_epochs, lr=args.probe_lr, seed=args.seed)
    train_supervised(vit, k + 1, args.iters, args.image_size, args.train_images, args.seed)
    rows[f'supervised ViT ({args.iters} it)'] = dense_evaluation(
        vit_features, train[:2], val[:2], k + 1, val_instances=val[2], epochs=args.probe_epochs,
        lr=args.probe_lr, seed=args.seed)
    lines = ['| features | linear-probe mIoU (%) | pixel acc (%) | dispersion |', '|---|---|---|---|']
    for name, r in rows.items():
        lines.append(f"| {name} | {100 * r['mIoU']:.2f} | {100 * r['pixel_acc']:.2f} | "
                     f"{r['dispersion']['dispersion']:.3f} |")
    print('\n'.join(lines))
    return rows


if __name__ == '__main__':
    main()

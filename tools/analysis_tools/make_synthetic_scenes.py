"""Write generated scenes with ground-truth masks to disk in the ADE20K layout.

Example::

    python tools/analysis_tools/make_synthetic_scenes.py --out data/synthetic_scenes \
        --num-train 2000 --num-val 200 --seed 0

Writes ``images/{training,validation}/*.jpg``, ``annotations/{training,validation}/*.png`` (class ids
``0..K``, 0 = background, a real class: load with ``reduce_zero_label=False`` and
``cotap_mm.datasets.synthetic_scenes.synthetic_metainfo(K)``) and ``synthetic_scenes.json``.
"""
import argparse
import time
from typing import List, Optional

from cotap_mm.datasets.synthetic_scenes import write_ade20k_layout


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='Generate synthetic scenes (ADE20K layout)')
    p.add_argument('--out', required=True, help='output directory')
    p.add_argument('--num-train', type=int, default=1000, help='number of training images')
    p.add_argument('--num-val', type=int, default=200, help='number of validation images')
    p.add_argument('--seed', type=int, default=0, help='data set seed')
    p.add_argument('--image-size', type=int, default=96, help='image side in pixels')
    p.add_argument('--num-classes', type=int, default=8, help='number of object classes K')
    p.add_argument('--min-objects', type=int, default=2)
    p.add_argument('--max-objects', type=int, default=6)
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    counts = write_ade20k_layout(
        args.out,
        num_train=args.num_train,
        num_val=args.num_val,
        seed=args.seed,
        size=args.image_size,
        num_classes=args.num_classes,
        min_objects=args.min_objects,
        max_objects=args.max_objects)
    print(f'wrote {counts["train"]} training and {counts["val"]} validation images to '
          f'{args.out} in {time.time() - t0:.1f}s')
    return counts


if __name__ == '__main__':
    main()

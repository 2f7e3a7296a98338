"""List the unreadable images of a folder before a long run.

Decodes every image under DATA_ROOT (recursively) in parallel, as the training pipeline does
(OpenCV through mmcv) and fully through Pillow (which also catches truncated files), with a
progress bar; prints each bad file with the reason and exits with status 1 if there is any.

Examples::

    python tools/misc/check_images.py data/coco/train2017 --workers 16
    python tools/misc/check_images.py data/imagenet/train --out bad_images.txt

Then delete or replace the listed files, or train with ``skip_bad_images=True`` in the dataset
(``COCOUnlabeled`` / ``ImageNetUnlabeled`` / ``UnlabeledImageDataset``).
"""
import argparse
import os
import sys

try:
    import cotap_mm  # noqa: F401  (registers modules, installs the safe checkpoint loader)
except ModuleNotFoundError as err:  # not the project's environment, e.g. the system python
    sys.exit(f'tools/misc/check_images.py: {err} in {sys.executable}: use the cotap_mm environment '
             '(`source .venv/bin/activate` after `make setup`, or .venv/bin/python)')
from cotap_mm.datasets.image_check import IMAGE_EXTENSIONS, list_images, scan_images  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='List unreadable images under a folder')
    parser.add_argument('data_root', help='folder to scan (recursively)')
    parser.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1),
                        help='parallel processes (default: min(8, CPUs))')
    parser.add_argument('--extensions', nargs='+', default=list(IMAGE_EXTENSIONS),
                        help='file extensions to check')
    parser.add_argument('--out', help='also write the bad files to this text file, one per line')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.workers < 1:
        raise SystemExit(f'--workers must be >= 1, got {args.workers}')
    paths = list_images(args.data_root, args.extensions)
    print(f'checking {len(paths)} images under {args.data_root} with {args.workers} workers')
    bad = scan_images(paths, workers=args.workers, progress=not args.no_progress)
    print()
    for path, why in bad:
        print(f'BAD {path}: {why}')
    print(f'{len(bad)} of {len(paths)} images unreadable')
    if args.out:
        with open(args.out, 'w') as f:
            f.writelines(f'{p}\n' for p, _ in bad)
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())

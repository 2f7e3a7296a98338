"""Train a model with MMEngine's runner: the OpenMMLab ``tools/train.py`` (same arguments as mmpretrain's).

Examples::

    python tools/train.py configs/cotap/cotap_vit-tiny-p8_1xb8-demo_synthetic.py --work-dir work_dirs/demo
    tools/dist_train.sh configs/cotap_vits16_coco.py 8            # one node, 8 GPUs (or 8 CPU processes)
    python tools/train.py CONFIG --resume                         # resume from the latest checkpoint
    python tools/train.py CONFIG --resume work_dirs/x/iter_100.pth

Run it with the project's Python (``source .venv/bin/activate`` once, or ``.venv/bin/python``);
the wrappers ``tools/dist_train.sh`` / ``slurm_train.sh`` pick it themselves. On a machine without
CUDA and without ``OMP_NUM_THREADS`` each process uses one torch thread (logged).
"""
import argparse
import os
import os.path as osp
import sys

try:
    import cotap_mm  # noqa: F401  (registers modules, installs the safe checkpoint loader)
except ModuleNotFoundError as err:  # not the project's environment, e.g. the system python
    sys.exit(f'tools/train.py: {err} in {sys.executable}: use the cotap_mm environment '
             '(`source .venv/bin/activate` after `make setup`, or .venv/bin/python)')
from cotap_mm.utils import adapt_cfg_for_launcher, set_cpu_threads, trust_checkpoint  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.runner import Runner  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint; without a path, from the latest checkpoint in the '
        'work dir')
    parser.add_argument('--amp', action='store_true', help='mixed precision training')
    parser.add_argument('--no-validate', action='store_true', help='skip validation during training')
    parser.add_argument('--auto-scale-lr', action='store_true', help='scale lr with the batch size')
    parser.add_argument('--no-pin-memory', action='store_true', help='dataloader pin_memory=False')
    parser.add_argument('--no-persistent-workers', action='store_true',
                        help='dataloader persistent_workers=False')
    parser.add_argument(
        '--trust-checkpoint', action='append', default=[], metavar='FILE',
        help='allow full unpickling (weights_only=False) of this checkpoint file only; '
        'can be repeated. Only for files you trust.')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings in the config, key=value pairs, e.g. train_cfg.max_iters=10')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def merge_args(cfg: Config, args: argparse.Namespace) -> Config:
    """Merge command-line arguments into the config (mmpretrain's semantics)."""
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

    if args.amp:
        optim_wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if optim_wrapper not in ('OptimWrapper', 'AmpOptimWrapper'):
            raise ValueError(f'--amp is only supported with OptimWrapper, the config uses {optim_wrapper}')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    if args.no_validate:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None

    if args.auto_scale_lr:
        cfg.setdefault('auto_scale_lr', {})['enable'] = True

    def set_loader(loader_name: str, key: str, value) -> None:
        loader = cfg.get(loader_name)
        if loader is not None:
            loader[key] = value

    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if args.no_pin_memory:
            set_loader(name, 'pin_memory', False)
        if args.no_persistent_workers:
            set_loader(name, 'persistent_workers', False)

    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    return cfg


def main(argv=None) -> None:
    args = parse_args(argv)
    for path in args.trust_checkpoint:
        trust_checkpoint(path)
    cfg = Config.fromfile(args.config)
    cfg = merge_args(cfg, args)
    adapt_cfg_for_launcher(cfg, args.launcher)
    runner = Runner.from_cfg(cfg)
    set_cpu_threads()  # logged by the runner's logger
    runner.train()


if __name__ == '__main__':
    main()

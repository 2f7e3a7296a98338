"""Evaluate a checkpoint with MMEngine's runner (the OpenMMLab ``tools/test.py``).

Run it with the project's Python (``source .venv/bin/activate``, or ``.venv/bin/python``), or
through ``tools/dist_test.sh``, which picks it.
"""
import argparse
import os
import os.path as osp
import sys

try:
    import cotap_mm  # noqa: F401  (registers modules, installs the safe checkpoint loader)
except ModuleNotFoundError as err:  # not the project's environment, e.g. the system python
    sys.exit(f'tools/test.py: {err} in {sys.executable}: use the cotap_mm environment '
             '(`source .venv/bin/activate` after `make setup`, or .venv/bin/python)')
from cotap_mm.utils import adapt_cfg_for_launcher, set_cpu_threads, trust_checkpoint  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.runner import Runner  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the directory to save the evaluation results')
    parser.add_argument('--out', help='write the metrics to this JSON file')
    parser.add_argument('--trust-checkpoint', action='append', default=[], metavar='FILE',
                        help='allow full unpickling of this checkpoint file only')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, key=value pairs')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    for path in args.trust_checkpoint:
        trust_checkpoint(path)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    adapt_cfg_for_launcher(cfg, args.launcher)
    runner = Runner.from_cfg(cfg)
    set_cpu_threads()
    metrics = runner.test()
    if args.out is not None:
        import json
        with open(args.out, 'w') as f:
            json.dump({k: float(v) if hasattr(v, '__float__') else v for k, v in metrics.items()}, f,
                      indent=2)
    return metrics


if __name__ == '__main__':
    main()

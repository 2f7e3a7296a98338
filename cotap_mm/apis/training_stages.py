"""One training stage of the CPU demo and benchmarks: a config trained for N iterations in a work dir.

The demo (``tools/demo.py``), the dense benchmark (``tools/benchmarks/bench_dense_methods.py``) and
``tools/analysis_tools/cotap_from_starts.py`` chain stages (an image-level start, then CoTAP or a
baseline from it). A stage whose final checkpoint exists is skipped, an interrupted one resumes.
"""
import os.path as osp
from typing import Any, Dict, List, Optional

from mmengine.config import Config
from mmengine.logging import print_log

__all__ = ['stage_checkpoint', 'rescale_param_schedulers', 'train_stage']


def stage_checkpoint(work_dir: str, iters: int) -> str:
    """Path of the final checkpoint of a stage of ``iters`` iterations in ``work_dir``."""
    return osp.join(work_dir, f'iter_{iters}.pth')


def rescale_param_schedulers(param_scheduler: List[Dict[str, Any]], iters: int,
                             config_iters: int) -> None:
    """Stretch iteration-based schedulers written for ``config_iters`` to ``iters`` (in place).

    ``begin`` / ``end`` are scaled and rounded (``end`` at least ``begin + 1``); ``T_max`` becomes
    ``end - begin``.
    """
    scale = iters / config_iters
    for sched in param_scheduler:
        sched['begin'] = int(round(sched.get('begin', 0) * scale))
        sched['end'] = max(sched['begin'] + 1, int(round(sched.get('end', iters / scale) * scale)))
        if 'T_max' in sched:
            sched['T_max'] = sched['end'] - sched['begin']


def train_stage(cfg_path: str, work_dir: str, iters: int, seed: int,
                data_root: Optional[str] = None, init_from: Optional[str] = None,
                extra: Optional[Dict[str, Any]] = None) -> str:
    """Train ``cfg_path`` for ``iters`` iterations in ``work_dir`` with MMEngine's runner.

    Args:
        cfg_path (str): an iteration-based pretraining config.
        work_dir (str): the stage's work dir (checkpoints, logs).
        iters (int): iterations; the config's schedulers are rescaled to them.
        seed (int): ``randomness.seed``.
        data_root (str, optional): pretrain on this image folder (``UnlabeledImageDataset`` with
            the config's pipeline) instead of the config's data. Defaults to None.
        init_from (str, optional): checkpoint whose ``backbone.*`` initialise the backbone
            (``Pretrained`` init_cfg). Defaults to None.
        extra (dict, optional): ``--cfg-options``-style overrides merged last. Defaults to None.

    Returns:
        str: the final checkpoint ``work_dir/iter_{iters}.pth``; returned at once when it exists.
    """
    ckpt = stage_checkpoint(work_dir, iters)
    if osp.isfile(ckpt):
        print_log(f'{ckpt} exists: stage already done', logger='current')
        return ckpt
    cfg = Config.fromfile(cfg_path)
    cfg.work_dir = work_dir
    config_iters = cfg.train_cfg.max_iters
    cfg.train_cfg.max_iters = iters
    cfg.randomness = dict(seed=seed, deterministic=False)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=max(iters // 3, 1),
                                        by_epoch=False, max_keep_ckpts=1)
    rescale_param_schedulers(cfg.param_scheduler, iters, config_iters)
    if data_root is not None:
        ds = cfg.train_dataloader.dataset
        pipeline = [dict(type='LoadImageFromFile')] + list(ds.pipeline)
        cfg.train_dataloader.dataset = dict(type='UnlabeledImageDataset', data_root=data_root,
                                            pipeline=pipeline)
    if init_from is not None:
        cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=init_from,
                                           prefix='backbone.')
    if extra:
        cfg.merge_from_dict(extra)
    # an interrupted stage resumes from the latest checkpoint in its work dir
    cfg.resume = osp.isfile(osp.join(work_dir, 'last_checkpoint'))
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg)
    runner.train()
    return ckpt

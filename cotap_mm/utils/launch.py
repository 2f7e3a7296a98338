"""Distributed launch on machines without CUDA.

mmengine 0.10.7's ``init_dist('pytorch')`` always calls ``torch.cuda.set_device``, which fails on a
CPU-only machine, and its default DDP wrapper passes ``device_ids=[LOCAL_RANK]``. With CUDA present
nothing here changes anything (nccl, one GPU per process, as mmengine does it).
:func:`set_cpu_threads` gives a CPU run one torch thread per process unless ``OMP_NUM_THREADS`` says
otherwise.
"""
import logging
import os
from typing import Mapping, Optional

import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.logging import print_log

CPU_BACKEND = 'gloo'


def adapt_cfg_for_launcher(cfg: Config, launcher: str) -> Config:
    """Make ``cfg`` runnable under ``launcher`` on this machine; returns ``cfg`` (modified in place).

    Without CUDA and with a distributed launcher: the process group uses ``gloo`` and is
    initialised here without ``cuda.set_device`` (the runner then finds it initialised and skips its
    own ``init_dist``), and the DDP wrapper gets ``device_ids=None``. ``SyncBN`` has no CPU path,
    so ``cfg.sync_bn`` is refused with a clear error.

    Raises:
        ValueError: ``launcher`` is not one of ``none``, ``pytorch``, ``slurm``, ``mpi``; or a
            CPU-only distributed run asks for ``sync_bn``; or a CPU-only run uses a launcher other
            than ``pytorch``.
    """
    if launcher not in ('none', 'pytorch', 'slurm', 'mpi'):
        raise ValueError(f'--launcher must be one of none/pytorch/slurm/mpi, got {launcher!r}')
    amp_to_fp32_on_cpu(cfg)
    if launcher == 'none' or torch.cuda.is_available():
        return cfg
    if launcher != 'pytorch':
        raise ValueError(
            f'--launcher {launcher} needs CUDA; on a CPU-only machine launch with torchrun '
            '(tools/dist_train.sh), i.e. --launcher pytorch.')
    if cfg.get('sync_bn'):
        raise ValueError(f'cfg.sync_bn={cfg.sync_bn!r}: SyncBN has no CPU implementation; '
                         'remove it (--cfg-options sync_bn=None) for a CPU run.')
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    dist_cfg['backend'] = CPU_BACKEND
    wrapper = cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel')
    wrapper['device_ids'] = None
    wrapper.setdefault('broadcast_buffers', False)
    if 'find_unused_parameters' in cfg and wrapper.get('type') == 'MMDistributedDataParallel':
        wrapper.setdefault('find_unused_parameters', cfg.find_unused_parameters)
    cfg.model_wrapper_cfg = wrapper
    init_cpu_process_group(dist_cfg)
    return cfg


def amp_to_fp32_on_cpu(cfg: Config) -> Config:
    """Without CUDA, run an ``AmpOptimWrapper`` config (the paper configs: fp16 on GPU) in fp32.

    mmengine's ``AmpOptimWrapper`` refuses to build without an accelerator; the paper configs keep
    fp16 for GPUs and a CPU run (a smoke test, a debug run) gets a plain ``OptimWrapper`` with the
    same optimizer, clipping and accumulation, and a warning saying so. Returns ``cfg``.
    """
    ow = cfg.get('optim_wrapper')
    if torch.cuda.is_available() or not ow or ow.get('type') != 'AmpOptimWrapper':
        return cfg
    dropped = [k for k in ('loss_scale', 'dtype', 'use_fsdp') if k in ow]
    for k in dropped:
        ow.pop(k)
    ow['type'] = 'OptimWrapper'
    print_log('No CUDA: optim_wrapper AmpOptimWrapper -> OptimWrapper (fp32)'
              + (f', dropped {dropped}' if dropped else ''), logger='current', level=logging.WARNING)
    return cfg


def init_cpu_process_group(dist_cfg: dict) -> None:
    """``torch.distributed.init_process_group`` from torchrun's environment, without CUDA."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        return
    missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT') if k not in os.environ]
    if missing:
        raise RuntimeError(f'--launcher pytorch expects the torchrun environment; missing {missing}. '
                           'Use tools/dist_train.sh or torchrun.')
    kwargs = {k: v for k, v in dist_cfg.items() if k != 'backend'}
    torch_dist.init_process_group(backend=dist_cfg.get('backend', CPU_BACKEND),
                                  rank=int(os.environ['RANK']),
                                  world_size=int(os.environ['WORLD_SIZE']), **kwargs)


def shutdown_process_group() -> None:
    """Destroy the default process group if one is up (after a final barrier by the caller).

    A gloo process group left to the interpreter's exit can abort with "terminate called without
    an active exception" while its threads are torn down; tools that initialise one themselves end
    with this call.
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def set_cpu_threads(environ: Optional[Mapping[str, str]] = None,
                    cuda: Optional[bool] = None) -> int:
    """One PyTorch thread per process for a CPU run that did not choose (no ``OMP_NUM_THREADS``).

    PyTorch's default (a thread per core in every process) was 6-10x slower per iteration than one
    thread on a shared 2-core machine (tiny CoTAP config, load average ~7; earlier, at lighter load,
    2-3x); ``tools/dist_train.sh`` sets ``OMP_NUM_THREADS=1`` for the same reason. With CUDA, or
    with ``OMP_NUM_THREADS`` set, nothing changes. The choice is logged.

    Args:
        environ (Mapping, optional): the environment. Defaults to ``os.environ``.
        cuda (bool, optional): whether CUDA is used. Defaults to ``torch.cuda.is_available()``.

    Returns:
        int: the thread count now in effect.
    """
    environ = os.environ if environ is None else environ
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda or environ.get('OMP_NUM_THREADS'):
        return torch.get_num_threads()
    default = torch.get_num_threads()
    torch.set_num_threads(1)
    print_log(f'CPU run without OMP_NUM_THREADS: 1 torch thread per process (PyTorch default here: '
              f'{default}, several times slower on shared cores); set OMP_NUM_THREADS=N to choose',
              logger='current', level=logging.INFO)
    return 1

"""Shims (checkpoint loading under torch>=2.6, CPU-only distributed launch, stock OpenMMLab configs
under NumPy 2 and ``mmpretrain::`` inheritance) and run safety (atomic writes, exact resume, strict
start weights, divergence and config checks)."""
from .atomic_io import atomic_torch_save, atomic_write_text
from .checkpoint import (UnsafeCheckpointError, checkpoint_problem, find_resumable_checkpoint,
                         from_plain, install_safe_local_loader, safe_torch_load, to_plain,
                         trust_checkpoint, trusted_checkpoint)
from .divergence import DivergenceError
from .launch import adapt_cfg_for_launcher, set_cpu_threads
from .openmmlab_compat import install_openmmlab_compat
from .start_weights import StartWeightsError

install_safe_local_loader()
install_openmmlab_compat()

__all__ = [
    'UnsafeCheckpointError', 'from_plain', 'install_safe_local_loader', 'safe_torch_load', 'to_plain',
    'trust_checkpoint', 'trusted_checkpoint', 'adapt_cfg_for_launcher', 'atomic_torch_save',
    'atomic_write_text', 'checkpoint_problem', 'find_resumable_checkpoint', 'DivergenceError',
    'StartWeightsError', 'install_openmmlab_compat', 'set_cpu_threads'
]

"""Compatibility shims only: checkpoint loading under torch>=2.6 and CPU-only distributed launch."""
from .checkpoint import (UnsafeCheckpointError, from_plain, install_safe_local_loader,
                         safe_torch_load, to_plain, trust_checkpoint, trusted_checkpoint)
from .launch import adapt_cfg_for_launcher

install_safe_local_loader()

__all__ = [
    'UnsafeCheckpointError', 'from_plain', 'install_safe_local_loader', 'safe_torch_load', 'to_plain',
    'trust_checkpoint', 'trusted_checkpoint', 'adapt_cfg_for_launcher'
]

"""Buffers that per-step code reads on the host without a device synchronisation.

A counter or flag that decides what a training step does (a warm-up, a frozen layer, a queue
pointer) must be saved in checkpoints, so it is a buffer; reading a CUDA buffer with ``.item()``
every step would stall the GPU. :class:`HostMirrorMixin` keeps a Python copy next to each such
buffer: writes go to both, reads take the copy, and the copy is refreshed whenever a state dict is
loaded (resume, ``load_from``).
"""
from typing import Dict, Union

import torch

__all__ = ['HostMirrorMixin']

Scalar = Union[bool, int]


class HostMirrorMixin:
    """Mixin for ``nn.Module`` subclasses (put it before ``nn.Module`` in the bases)."""

    def register_mirrored_buffer(self, name: str, value: Scalar) -> None:
        """Register the 0-dim buffer ``name`` (bool or int64, from ``value``) and its host copy."""
        self.register_buffer(name, torch.tensor(value))
        self._mirror()[name] = value

    def host_value(self, name: str) -> Scalar:
        """The host copy of the buffer ``name``."""
        return self._mirror()[name]

    def set_host_value(self, name: str, value: Scalar) -> None:
        """Write ``value`` to the buffer ``name`` (no sync) and to its host copy."""
        getattr(self, name).fill_(value)
        self._mirror()[name] = value

    def _mirror(self) -> Dict[str, Scalar]:
        return self.__dict__.setdefault('_host_mirror', {})

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        mirror = self._mirror()
        for name, old in mirror.items():
            if prefix + name in state_dict:  # once per load, not per step
                mirror[name] = type(old)(state_dict[prefix + name].item())

"""Building an algorithm's submodules from a config dict or taking a ready ``nn.Module``."""
from typing import Any, Union

import torch.nn as nn
from mmpretrain.registry import MODELS

__all__ = ['build_module']


def build_module(cfg: Union[dict, nn.Module], what: str, **defaults: Any) -> nn.Module:
    """``MODELS.build(cfg)`` for a config dict (``defaults`` filled in where ``cfg`` lacks the
    key; ``cfg`` itself is not modified), or ``cfg`` itself when it is already a module.

    Args:
        cfg (dict | nn.Module): config or module.
        what (str): argument name for the error message (e.g. ``'cls_head'``).
        **defaults: keys set with ``setdefault`` (e.g. ``in_channels=C``).

    Raises:
        TypeError: ``cfg`` is neither a dict nor an ``nn.Module`` (or built something else).
    """
    if isinstance(cfg, dict):
        cfg = dict(cfg)
        for key, value in defaults.items():
            cfg.setdefault(key, value)
        cfg = MODELS.build(cfg)
    if not isinstance(cfg, nn.Module):
        raise TypeError(f'{what} must be a config dict or an nn.Module, got {type(cfg)}')
    return cfg

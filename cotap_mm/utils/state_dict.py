"""Finding the state dict inside a loaded checkpoint: the one reader every loader uses."""
from collections import OrderedDict
from typing import Any, Mapping, Sequence

import torch

__all__ = ['find_state_dict']


def _is_state_dict(d: Mapping) -> bool:
    return len(d) > 0 and all(isinstance(v, torch.Tensor) for v in d.values())


def find_state_dict(ckpt: Any, source: str = 'checkpoint',
                    nested: Sequence[str] = ('state_dict', 'model', 'module'),
                    strip_module: bool = True) -> 'OrderedDict[str, torch.Tensor]':
    """The tensor state dict of a loaded checkpoint.

    The checkpoint itself when it is a dict of tensors, otherwise the first entry named in
    ``nested`` that is a mapping (descending up to 4 levels: mmengine's ``state_dict``, a
    ``model`` dict, a DDP ``module``); non-tensor entries are left out and, with
    ``strip_module``, a ``module.`` prefix (DDP) is removed from the keys.

    Args:
        ckpt: what ``torch.load`` / ``_load_checkpoint`` returned.
        source (str): the file, for the error message. Defaults to 'checkpoint'.
        nested (Sequence[str]): container keys to descend into, in order.
        strip_module (bool): remove ``module.`` from the keys. Defaults to True.

    Raises:
        ValueError: ``ckpt`` is not a mapping or holds no tensors where looked; the message names
            ``source`` and the top-level keys.
    """
    if not isinstance(ckpt, Mapping):
        raise ValueError(f'{source}: expected a checkpoint dict, got {type(ckpt).__name__}')
    d: Mapping = ckpt
    for _ in range(4):
        if _is_state_dict(d):
            break
        inner = next((d[k] for k in nested if isinstance(d.get(k), Mapping)), None)
        if inner is None:
            break
        d = inner
    tensors = OrderedDict((k, v) for k, v in d.items() if isinstance(v, torch.Tensor))
    if not tensors:
        raise ValueError(f'{source}: no state dict of tensors found (looked under '
                         f'{", ".join(map(repr, nested))}); top-level keys: '
                         f'{sorted(map(str, ckpt))[:20]}')
    if strip_module:
        tensors = OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v)
                              for k, v in tensors.items())
    return tensors

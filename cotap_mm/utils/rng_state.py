"""Every process-global random number generator a training step draws from, as plain data.

A resumed run is bitwise equal to an uninterrupted one only if the step after the checkpoint draws
the same random numbers: the data pipeline (``random`` and ``np.random`` in the main process when
``num_workers=0``), the model (``torch`` CPU and CUDA generators: drop-path, the random-image
negatives and partner draws of CoTAP, the de-coupling branch, queue subsets) and anything else
that uses the global generators. :func:`capture_rng_state` returns them as tensors, numbers,
strings and tuples, which ``torch.load(weights_only=True)`` accepts; :func:`restore_rng_state`
puts them back. Dataloader worker processes are reseeded by MMEngine from the seed, rank and
worker id, so they need nothing here.
"""
import logging
import random
from typing import Any, Dict

import numpy as np
import torch
from mmengine.logging import print_log

__all__ = ['capture_rng_state', 'restore_rng_state']


def capture_rng_state() -> Dict[str, Any]:
    """The state of Python's ``random``, NumPy's global generator and torch's CPU (and CUDA)
    generators."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state: Dict[str, Any] = {
        'python': random.getstate(),
        'numpy': (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(gauss)),
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def _tuples(obj: Any) -> Any:
    """Lists back to tuples (``random.setstate`` needs nested tuples)."""
    if isinstance(obj, (list, tuple)):
        return tuple(_tuples(v) for v in obj)
    return obj


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`.

    Raises:
        KeyError: ``state`` lacks one of ``python``, ``numpy``, ``torch``.
    """
    missing = [k for k in ('python', 'numpy', 'torch') if k not in state]
    if missing:
        raise KeyError(f'RNG state lacks {missing} (has {sorted(state)})')
    random.setstate(_tuples(state['python']))
    kind, keys, pos, has_gauss, gauss = state['numpy']
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((kind, keys.astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    torch.set_rng_state(torch.as_tensor(state['torch'], dtype=torch.uint8).cpu())
    if 'cuda' in state and torch.cuda.is_available():
        cuda = list(state['cuda'])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(
                [torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda])
        else:
            print_log(f'RNG state: the checkpoint has {len(cuda)} CUDA generator states, this '
                      f'process sees {torch.cuda.device_count()} devices; CUDA generators not '
                      'restored', logger='current', level=logging.WARNING)

"""Non-finite values in a training step or a model: the error and the pure checks behind it."""
import math
from typing import Iterable, List, Mapping, Optional, Tuple

import torch

__all__ = ['DivergenceError', 'nonfinite_terms', 'nonfinite_tensors', 'describe_divergence']


class DivergenceError(FloatingPointError):
    """Training diverged: a loss, the gradient norm or the model holds NaN or inf."""


def nonfinite_terms(values: Mapping[str, float]) -> List[Tuple[str, float]]:
    """``(name, value)`` of every value that is NaN or infinite, in the given order."""
    return [(k, v) for k, v in values.items() if not math.isfinite(v)]


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> List[str]:
    """Names of the floating-point tensors of ``state`` with any NaN or inf entry.

    One device sync per device (the per-tensor flags are stacked first).
    """
    by_device: dict = {}
    for k, v in state.items():
        if torch.is_tensor(v) and v.is_floating_point() and v.numel() > 0:
            by_device.setdefault(v.device, []).append(k)
    bad = set()
    for names in by_device.values():
        flags = torch.stack([torch.isfinite(state[k]).all() for k in names]).tolist()
        bad.update(k for k, ok in zip(names, flags) if not ok)
    return [k for k in state if k in bad]


def describe_divergence(iteration: int, terms: Iterable[Tuple[str, float]],
                        last_checkpoint: Optional[str]) -> str:
    """The message of a :class:`DivergenceError`: iteration, non-finite terms, where to restart."""
    shown = ', '.join(f'{k}={v}' for k, v in terms)
    restart = (f'{last_checkpoint} (resume with --resume)' if last_checkpoint else
               'none saved yet')
    return (f'training diverged at iteration {iteration}: non-finite {shown}. Last good '
            f'checkpoint: {restart}. Lower the learning rate or check the data '
            '(tools/misc/check_images.py).')

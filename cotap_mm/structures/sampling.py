"""Argument parsing and random draws shared by the data transforms and the models.

The draws accept a ``np.random.Generator``, a ``np.random.RandomState`` or the ``np.random``
module, so a transform can use its own seeded generator or the global state.
"""
import math
from typing import Any, Sequence, Tuple, Union

import numpy as np

__all__ = ['RNG', 'as_hw', 'check_range', 'rand_int', 'rand_uniform']

RNG = Union[np.random.Generator, np.random.RandomState, Any]


def as_hw(size: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
    """``224`` or ``(h, w)`` -> ``(h, w)`` of positive ints (bools refused).

    Raises:
        ValueError: anything else, naming ``name``.
    """
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    if (not isinstance(size, (tuple, list)) or len(size) != 2 or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
            for s in size)):
        raise ValueError(f'{name} must be a positive int or an (h, w) pair of positive ints, '
                         f'got {size!r}')
    return int(size[0]), int(size[1])


def check_range(value: Sequence[float], name: str, lower: float = 0.0,
                upper: float = math.inf) -> Tuple[float, float]:
    """A ``(min, max)`` pair with ``lower < min <= max <= upper``, as floats.

    Raises:
        TypeError: ``value`` is not a pair.
        ValueError: the bounds do not hold.
    """
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f'{name} must be a (min, max) pair of numbers, got {value!r}')
    lo, hi = float(value[0]), float(value[1])
    if not (lower < lo <= hi <= upper):
        raise ValueError(f'{name} must satisfy {lower} < min <= max <= {upper}, got {value!r}')
    return lo, hi


def rand_uniform(rng: RNG, low: float, high: float) -> float:
    """A float uniform in ``[low, high)``."""
    return float(rng.uniform(low, high))


def rand_int(rng: RNG, low: int, high: int) -> int:
    """An integer uniform in ``[low, high]`` (inclusive)."""
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(low, high + 1))
    return int(rng.randint(low, high + 1))

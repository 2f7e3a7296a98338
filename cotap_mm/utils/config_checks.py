"""Config mistakes refused when the model and hooks are built, before any training time is spent."""
import difflib
import numbers
from typing import Iterable, List, Tuple

import torch.nn as nn

__all__ = ['negative_loss_weights', 'check_loss_weights', 'check_known_keys']


def negative_loss_weights(model: nn.Module) -> List[Tuple[str, float]]:
    """``(module path, weight)`` of every submodule whose ``loss_weight`` is a negative number."""
    found = []
    for name, module in model.named_modules():
        w = getattr(module, 'loss_weight', None)
        if isinstance(w, numbers.Real) and not isinstance(w, bool) and w < 0:
            found.append((name or type(model).__name__, float(w)))
    return found


def check_loss_weights(model: nn.Module) -> None:
    """Refuse a model with a negative loss weight (it would maximise that loss).

    Raises:
        ValueError: naming every offending loss and its weight.
    """
    bad = negative_loss_weights(model)
    if bad:
        shown = ', '.join(f'{n}.loss_weight={w}' for n, w in bad)
        raise ValueError(f'{type(model).__name__}: negative loss weight(s) {shown}; a loss weight '
                         'must be >= 0 (0 or None switches a term off)')


def check_known_keys(owner: str, given: Iterable[str], accepted: Iterable[str]) -> None:
    """Refuse config keys ``owner`` does not know, suggesting the closest known ones.

    Raises:
        TypeError: naming each unknown key (with a "did you mean") and the accepted keys.
    """
    accepted = sorted(set(accepted))
    unknown = [k for k in given if k not in accepted]
    if not unknown:
        return
    parts = []
    for k in unknown:
        close = difflib.get_close_matches(k, accepted, n=1)
        parts.append(f'{k!r}' + (f' (did you mean {close[0]!r}?)' if close else ''))
    raise TypeError(f'{owner}: unknown key(s) {", ".join(parts)}; accepted: {", ".join(accepted)}')

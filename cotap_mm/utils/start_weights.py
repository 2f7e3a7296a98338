"""Strict start weights: a checkpoint of the wrong architecture is an error, not a random init.

MMEngine loads ``load_from`` and ``init_cfg=dict(type='Pretrained')`` with ``strict=False`` and
prints key mismatches to the console only, so a DINO-tiny checkpoint, a ViT-S/16 of another layout
or a file of unrelated keys "loads" and the run trains from random initialisation.
:func:`compare_state_dicts` lists what differs; :func:`check_start_weights` raises
:class:`StartWeightsError` when keys of the checked part (the backbone) are missing from the
checkpoint or shaped differently, naming how many and the first few, and writes the whole report
to the current MMEngine logger (the run's log file) in any case. Keys the checkpoint has beyond the
model are reported, not refused (a deeper teacher's extra heads, a published file's neck).
"""
import logging
from typing import List, Mapping, NamedTuple, Optional, Sequence, Tuple

from mmengine.logging import print_log

__all__ = ['StartWeightsError', 'KeyReport', 'compare_state_dicts', 'format_key_report',
           'check_start_weights']

SHOW = 5  # keys named in a message


class StartWeightsError(RuntimeError):
    """Start weights do not fit the model (missing or mis-shaped keys)."""


class KeyReport(NamedTuple):
    """What differs between a model's state dict and a checkpoint's.

    ``missing``: model keys the checkpoint lacks; ``unexpected``: checkpoint keys the model
    lacks; ``mismatched``: ``(key, checkpoint shape, model shape)``; ``matched``: keys that load.
    """
    missing: List[str]
    unexpected: List[str]
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]
    matched: List[str]


def _resizable(key: str, ckpt: Tuple[int, ...], model: Tuple[int, ...],
               resizable: Sequence[str]) -> bool:
    """A position embedding of another grid (mmpretrain resizes it on load): same rank and width."""
    return (any(key.endswith(r) for r in resizable) and len(ckpt) == len(model) == 3
            and ckpt[0] == model[0] and ckpt[-1] == model[-1])


def compare_state_dicts(model: Mapping[str, object], ckpt: Mapping[str, object],
                        resizable: Sequence[str] = ('pos_embed', )) -> KeyReport:
    """Compare key names and shapes (values with a ``shape``; anything else compares by name).

    Args:
        model (Mapping): the model's ``state_dict()`` (or name -> tensor).
        ckpt (Mapping): the checkpoint's state dict, prefixes already stripped.
        resizable (Sequence[str]): key suffixes whose grid may differ (mmpretrain ViTs resize
            the position embedding while loading). Defaults to ``('pos_embed',)``.

    Returns:
        KeyReport: ``num_batches_tracked`` of BatchNorm never counts as missing (as MMEngine).
    """
    missing, mismatched, matched = [], [], []
    for key, value in model.items():
        if key not in ckpt:
            if not key.endswith('num_batches_tracked'):
                missing.append(key)
            continue
        m_shape = tuple(getattr(value, 'shape', ()))
        c_shape = tuple(getattr(ckpt[key], 'shape', ()))
        if hasattr(value, 'shape') and hasattr(ckpt[key], 'shape') and m_shape != c_shape \
                and not _resizable(key, c_shape, m_shape, resizable):
            mismatched.append((key, c_shape, m_shape))
        else:
            matched.append(key)
    unexpected = [k for k in ckpt if k not in model]
    return KeyReport(missing, unexpected, mismatched, matched)


def _first(keys: Sequence[str]) -> str:
    more = f', ... ({len(keys) - SHOW} more)' if len(keys) > SHOW else ''
    return ', '.join(keys[:SHOW]) + more


def format_key_report(report: KeyReport, what: str, source: str) -> List[str]:
    """One line per kind of difference, with counts and the first few keys."""
    total = len(report.matched) + len(report.missing) + len(report.mismatched)
    lines = []
    if report.missing:
        lines.append(f'{what}: {len(report.missing)} of {total} keys missing from {source}: '
                     f'{_first(report.missing)}')
    if report.mismatched:
        shown = [f'{k} (checkpoint {list(c)} vs model {list(m)})' for k, c, m in report.mismatched]
        lines.append(f'{what}: {len(report.mismatched)} of {total} keys shaped differently in '
                     f'{source}: {_first(shown)}')
    if report.unexpected:
        lines.append(f'{what}: {len(report.unexpected)} keys of {source} not in the model '
                     f'(ignored): {_first(report.unexpected)}')
    return lines


def _split(state: Mapping[str, object], prefix: str) -> Tuple[dict, dict]:
    inside = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    outside = {k: v for k, v in state.items() if not k.startswith(prefix)}
    return inside, outside


def check_start_weights(model: Mapping[str, object], ckpt: Mapping[str, object], source: str,
                        strict: bool = True, checked_prefix: str = 'backbone.',
                        what: str = 'start weights',
                        logger: Optional[str] = 'current') -> KeyReport:
    """Refuse start weights whose checked part does not fit; log every difference.

    Args:
        model (Mapping): the model's state dict.
        ckpt (Mapping): the checkpoint's state dict (prefixes such as ``module.`` stripped).
        source (str): the checkpoint's name for messages.
        strict (bool): raise on missing or mis-shaped keys of the checked part; False (a config's
            deliberate ``strict=False``) only logs them as warnings. Defaults to True.
        checked_prefix (str): the part that must fit (``'backbone.'``); ``''`` or a prefix no
            model key has: the whole model. Differences elsewhere are logged, not refused.
        what (str): what is loaded, for messages. Defaults to 'start weights'.
        logger (str, optional): MMEngine logger name. Defaults to 'current' (the run's log file).

    Returns:
        KeyReport: of the checked part.

    Raises:
        StartWeightsError: ``strict`` and keys of the checked part are missing or mis-shaped.
    """
    if checked_prefix and not any(k.startswith(checked_prefix) for k in model):
        checked_prefix = ''
    m_in, m_out = _split(model, checked_prefix)
    c_in, c_out = _split(ckpt, checked_prefix)
    part = f'{what} ({checked_prefix}*)' if checked_prefix else what
    report = compare_state_dicts(m_in, c_in)
    lines = format_key_report(report, part, source)
    rest = format_key_report(compare_state_dicts(m_out, c_out), f'{what} (outside '
                             f'{checked_prefix}*)', source) if checked_prefix else []
    bad = bool(report.missing or report.mismatched)
    for line in lines + rest:
        print_log(line, logger=logger, level=logging.WARNING)
    if bad and strict:
        raise StartWeightsError(
            f'{source} does not fit the model: ' + '; '.join(lines[:2]) + '. Check the config '
            '(arch, patch_size, img_size) against the checkpoint, or convert it first '
            '(tools/model_converters/vit2cotap.py). To load a partial start on purpose set '
            'strict=False (init_cfg=dict(type=\'Pretrained\', ..., strict=False), or '
            "default_hooks.start_weights=dict(type='StartWeightsHook', strict=False) for "
            'load_from).')
    if not bad:
        print_log(f'{part}: all {len(report.matched)} keys loaded from {source}', logger=logger)
    return report

"""Strict start weights: a checkpoint of the wrong architecture is an error, not a random init.

MMEngine loads ``load_from`` and ``init_cfg=dict(type='Pretrained')`` with ``strict=False`` and
prints key mismatches to the console only, so a DINO-tiny checkpoint, a ViT-S/16 of another layout
or a file of unrelated keys "loads" and the run trains from random initialisation.
:func:`compare_state_dicts` lists what differs; :func:`check_start_weights` raises
:class:`StartWeightsError` when keys of the checked part (the backbone) are missing from the
checkpoint or shaped differently, naming how many and the first few, and writes one summary line
to the current MMEngine logger (the run's log file) in any case (``load_from X: backbone 150/150
keys loaded; not in the checkpoint, initialised by the model: teacher (230), neck (7), ...``), with
every differing key at DEBUG. Keys the checkpoint has beyond the model are reported, not refused (a
deeper teacher's extra heads, a published file's neck). :func:`quiet_mmengine_load` then spares the
console MMEngine's own one-line list of every missing key.
"""
import logging
import re
from collections import Counter
from typing import List, Mapping, MutableMapping, NamedTuple, Optional, Sequence, Tuple

from mmengine.logging import print_log

__all__ = ['StartWeightsError', 'KeyReport', 'compare_state_dicts', 'format_key_report',
           'summarize_start_weights', 'check_start_weights', 'quiet_mmengine_load']

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


def _groups(keys: Sequence[str]) -> str:
    """``teacher (230), neck (7), buffers (5)``: keys counted per top-level module, largest first;
    the model's own tensors (no module, e.g. ``loss_iter``) count as ``buffers``."""
    counts = Counter(key.split('.')[0] if '.' in key else 'buffers' for key in keys)
    return ', '.join(f'{k} ({v})' for k, v in counts.most_common())


def summarize_start_weights(report: KeyReport, outside: Optional[KeyReport], part: str, what: str,
                            source: str) -> str:
    """One line: ``load_from X: backbone 150/150 keys loaded; not in X, initialised by the model:
    teacher (230), neck (7), patch_head (6), cls_head (6)``.

    Args:
        report (KeyReport): of the checked part.
        outside (KeyReport, optional): of the rest of the model (None: the whole model was checked).
        part (str): name of the checked part (``'backbone'``, ``'model'``).
        what (str): what is loaded (``'load_from'``).
        source (str): the checkpoint's name.
    """
    total = len(report.matched) + len(report.missing) + len(report.mismatched)
    line = f'{what} {source}: {part} {len(report.matched)}/{total} keys loaded'
    if outside is not None and outside.missing:
        line += f'; not in the checkpoint, initialised by the model: {_groups(outside.missing)}'
    return line


def check_start_weights(model: Mapping[str, object], ckpt: Mapping[str, object], source: str,
                        strict: bool = True, checked_prefix: str = 'backbone.',
                        what: str = 'start weights',
                        logger: Optional[str] = 'current') -> KeyReport:
    """Refuse start weights whose checked part does not fit; log what loaded in one line.

    Logged: one INFO summary (:func:`summarize_start_weights`: the checked part's keys loaded, and
    per module the keys of the rest of the model the checkpoint lacks, e.g. the new heads and
    teacher of a post-pretraining start), a WARNING per kind of real difference (checked keys
    missing or mis-shaped, any key shaped differently, checkpoint keys the model lacks) with counts
    and the first few keys, and every differing key at DEBUG.

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
    outside = compare_state_dicts(m_out, c_out) if checked_prefix else None
    rest = []
    if outside is not None:  # the new modules of a start are expected: in the summary only
        rest = format_key_report(outside._replace(missing=[]), f'{what} (outside '
                                 f'{checked_prefix}*)', source)
    for line in lines + rest:
        print_log(line, logger=logger, level=logging.WARNING)
    print_log(summarize_start_weights(report, outside, checked_prefix.rstrip('.') or 'model', what,
                                      source), logger=logger, level=logging.INFO)
    for name, rep, prefix in (('checked', report, checked_prefix), ('other', outside, '')):
        if rep is not None and (rep.missing or rep.unexpected):
            print_log(f'{what} {source}, {name} part: missing from the checkpoint: '
                      f'{[prefix + k for k in rep.missing]}; not in the model: '
                      f'{[prefix + k for k in rep.unexpected]}', logger=logger, level=logging.DEBUG)
    if report.missing or report.mismatched:
        if strict:
            raise StartWeightsError(
                f'{source} does not fit the model: ' + '; '.join(lines[:2]) + '. Check the config '
                '(arch, patch_size, img_size) against the checkpoint, or convert it first '
                '(tools/model_converters/vit2cotap.py). To load a partial start on purpose set '
                'strict=False (init_cfg=dict(type=\'Pretrained\', ..., strict=False), or '
                "default_hooks.start_weights=dict(type='StartWeightsHook', strict=False) for "
                'load_from).')
    return report


def _module_paths(keys: Sequence[str]) -> set:
    """Every module path a key lies under, and the key itself: ``a.b.c`` -> ``a``, ``a.b``,
    ``a.b.c``."""
    paths = set()
    for key in keys:
        parts = key.split('.')
        paths.update('.'.join(parts[:i]) for i in range(1, len(parts) + 1))
    return paths


def quiet_mmengine_load(state: MutableMapping[str, object], model: Mapping[str, object]) -> None:
    """Spare the console MMEngine's one-line list of every key a start checkpoint lacks.

    MMEngine's ``load_state_dict`` (``strict=False``) prints the name of every missing key (about
    230 for a DINO start of CoTAP: the teacher's filter and heads, the student's, the queues). Here
    every model key whose module the checkpoint holds nothing of (no key of that module, nor a key
    of that name, e.g. ``teacher.neck.*`` from a DINO checkpoint) gets the model's own tensor:
    loading it is a no-op, the model keeps its initialisation, as MMEngine would. Keys of a module
    the checkpoint has some keys of are left alone (a partial or older layout stays visible, and a
    module's ``_load_from_state_dict`` converting an older layout, e.g. a ``proto_bank`` tensor to
    ``proto_bank.queue``, still sees exactly what the file holds there); no key is removed. Call
    after :func:`check_start_weights` has logged what differs.

    Args:
        state (MutableMapping): the checkpoint's state dict, changed in place; a ``module.``
            prefix (DDP) is understood.
        model (Mapping): the model's state dict (tensors shared with the model).
    """
    held = _module_paths([re.sub(r'^module\.', '', k) for k in state])
    for key, value in model.items():
        if key.rsplit('.', 1)[0] not in held:
            state[key] = value

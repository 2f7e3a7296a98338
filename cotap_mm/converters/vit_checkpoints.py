"""Checkpoint conversion into the layouts our configs load (the code of
``tools/model_converters/vit2cotap.py`` and ``cotap2timm.py --to cotap``; the tools' docstrings
describe the formats).

* :func:`convert_checkpoint`: a DINO / iBOT / DINOv2 / timm ViT -> ``{'state_dict': {'backbone.*'},
  'meta'}``.
* :func:`convert_release_checkpoint`: a released CoTAP ``.ckpt`` -> a CoTAP algorithm checkpoint or a
  ``CoTAPFilteredViT`` one.
* :func:`load_source` / :func:`load_with_placeholders`: reading sources with ``weights_only=True``.

Key mappings: :mod:`cotap_mm.models.backbones.vit_key_mapping`,
:mod:`cotap_mm.models.backbones.cotap_release_mapping`.
"""
import argparse
import os.path as osp
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import torch

from cotap_mm.models.backbones.cotap_release_mapping import (
    RELEASE_BRANCH_PREFIXES, RELEASE_HEADS, convert_release_branch, looks_like_cotap_release,
    release_model_kwargs, select_release_branch, split_release_checkpoint)
from cotap_mm.models.backbones.vit_key_mapping import (convert_dino_vit, detect_key_format,
                                                       infer_vit_arch, map_dino_key,
                                                       split_checkpoint, vit_kwargs_from_arch)

__all__ = ['SRC_FORMATS', 'TARGETS', 'load_with_placeholders', 'load_source', 'convert_checkpoint',
           'convert_release_checkpoint']

SRC_FORMATS = ('auto', 'dino', 'ibot', 'dinov2', 'timm', 'cotap-release')
TARGETS = ('algorithm', 'filtered')


class _Placeholder:
    """Stands for a pickled class that ``weights_only`` does not allow: calling or instantiating it
    gives an empty ``OrderedDict`` (which the loader may fill with the object's items / state)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> 'OrderedDict':
        return OrderedDict()


def load_with_placeholders(path: str) -> Tuple[Any, List[str]]:
    """``torch.load(weights_only=True)`` with inert placeholders for the globals it does not allow.

    Returns:
        tuple: the loaded object and the sorted names of the replaced globals.

    Raises:
        RuntimeError: the file still cannot be read that way (e.g. ``os`` / ``sys`` globals).
    """
    try:
        unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except ValueError as e:  # not a zip checkpoint of torch.save
        raise RuntimeError(f'{path}: cannot list its pickled globals ({e}); if you trust the file, '
                           're-run with --trust-checkpoint') from e
    try:
        with torch.serialization.safe_globals([(_Placeholder, name) for name in unsafe]):
            return torch.load(path, map_location='cpu', weights_only=True), unsafe
    except Exception as e:  # UnpicklingError and friends
        raise RuntimeError(f'{path} cannot be read with weights_only=True even with placeholders '
                           f'for {unsafe} ({e.__class__.__name__}: {e}). If you trust the file, '
                           're-run with --trust-checkpoint.') from e


def load_source(path: str, trust: bool = False) -> Any:
    """``torch.load`` on CPU with ``weights_only=True`` (``argparse.Namespace`` allowed) unless trusted."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'source checkpoint {path} does not exist')
    if trust:
        return torch.load(path, map_location='cpu', weights_only=False)
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:  # UnpicklingError and friends
            raise RuntimeError(
                f'{path} holds pickled objects that weights_only=True refuses ({e.__class__.__name__}).'
                ' If you trust the file, re-run with --trust-checkpoint.') from e


def convert_checkpoint(ckpt: Any, src_format: str = 'auto', branch: Optional[str] = 'teacher',
                       prefix: Optional[str] = 'backbone.', strict: bool = True,
                       num_heads: Optional[int] = None) -> Dict[str, Any]:
    """Loaded source checkpoint -> ``{'state_dict': ..., 'meta': ...}`` (see module docstring).

    DINO, iBOT, DINOv2 and timm share the same key names and
    :func:`~cotap_mm.models.backbones.vit_key_mapping.split_checkpoint` finds the trunk in all their
    containers, so ``src_format`` is mostly recorded in ``meta``; 'timm' additionally refuses a
    teacher/student checkpoint (a sign of a wrong format guess). ``num_heads`` only goes into
    ``meta['cotap_vit_kwargs']`` (the weights do not encode it; default: head dim 64).
    """
    if src_format not in SRC_FORMATS:
        raise ValueError(f'src_format must be one of {SRC_FORMATS}, got {src_format!r}')
    if src_format == 'cotap-release':
        raise ValueError("src_format='cotap-release' converts with convert_release_checkpoint")
    branch = branch or 'teacher'
    prefix = 'backbone.' if prefix is None else prefix
    if src_format == 'timm' and isinstance(ckpt, dict) and ('teacher' in ckpt or 'student' in ckpt):
        raise ValueError("src_format='timm' but the checkpoint has 'teacher'/'student' entries "
                         '(a DINO/iBOT checkpoint): use --src-format dino, ibot or auto')
    flat, dropped = split_checkpoint(ckpt, branch=branch)
    if src_format == 'auto' and looks_like_cotap_release(flat):
        raise ValueError('the checkpoint holds the released CoTAP object-aware filter (kernel, '
                         'norm_out_patch): use --src-format cotap-release --target '
                         'algorithm|filtered (or an explicit ViT format for the backbone only)')
    fmt = detect_key_format(flat)
    if fmt != 'timm':
        raise ValueError(f'source keys are not DINO/iBOT/timm ViT keys (detected {fmt!r}); '
                         f'first keys: {list(flat.keys())[:8]}')
    for k in flat:
        try:
            if map_dino_key(k) is None:
                dropped.append(k)
        except KeyError:
            dropped.append(k)
    converted = convert_dino_vit(flat, strict=strict, branch=branch)
    state_dict = OrderedDict((prefix + k, v.detach().clone().contiguous())
                             for k, v in converted.items())
    meta = dict(
        converter='tools/model_converters/vit2cotap.py',
        src_format=src_format,
        branch=branch if isinstance(ckpt, dict) and branch in ckpt else None,
        key_prefix=prefix,
        dropped_keys=sorted(set(dropped)),
        arch=infer_vit_arch(converted),
    )
    if meta['arch']['feedforward_channels'] is not None:
        meta['cotap_vit_kwargs'] = vit_kwargs_from_arch(meta['arch'], num_heads=num_heads)
    return dict(state_dict=state_dict, meta=meta)


def convert_release_checkpoint(ckpt: Any, target: str = 'algorithm', branch: Optional[str] = None,
                               strict: bool = True, num_heads: Optional[int] = None,
                               add_final_norm: bool = False,
                               source: str = 'checkpoint') -> Dict[str, Any]:
    """Loaded released CoTAP checkpoint -> ``{'state_dict': ..., 'meta': ...}`` (module docstring).

    Args:
        ckpt: what ``torch.load`` returned (Lightning ``.ckpt``, ``model.*`` or bare ViT dict).
        target (str): 'algorithm' (CoTAP: student + teacher + heads) or 'filtered'
            (``CoTAPFilteredViT``: ``backbone.*`` + ``neck.*``). Defaults to 'algorithm'.
        branch (str, optional): 'student' / 'teacher'. algorithm: None = each branch to its own
            place, else that branch for both; filtered: None = 'student'. Defaults to None.
        strict (bool): refuse unknown keys (else drop them, listed). Defaults to True.
        num_heads (int, optional): heads recorded in the kwargs (default: head dim 64).
        add_final_norm (bool): write a fresh ``backbone.ln1`` (see module docstring).
        source (str): file name for messages. Defaults to 'checkpoint'.

    Raises:
        ValueError: unknown target / branch, a missing branch, or what
            :func:`split_release_checkpoint` / :func:`convert_release_branch` refuse.
    """
    if target not in TARGETS:
        raise ValueError(f'target must be one of {TARGETS}, got {target!r}')
    layout, branches, dropped = split_release_checkpoint(ckpt, strict=strict, source=source)
    with_heads = target == 'algorithm'
    if target == 'filtered':
        places = {'': branch or 'student'}
    elif branch is None and None not in branches and 'teacher' not in branches:
        raise ValueError(f'{source}: no {RELEASE_BRANCH_PREFIXES["teacher"]}* tensors (the EMA '
                         'teacher); pass --branch student to put the student in both places')
    else:
        places = {'': branch or 'student', 'teacher.': branch or 'teacher'}
    state_dict: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    infos: Dict[str, Dict[str, Any]] = {}
    for place, name in places.items():
        sd = select_release_branch(branches, name, source=source)
        parts, info, d = convert_release_branch(sd, with_heads=with_heads, strict=strict,
                                                source=f'{source} ({name})')
        if add_final_norm:
            if 'ln1.weight' in parts['backbone']:
                raise ValueError(f'{source}: --add-final-norm, but the ViT already has a final norm')
            C = info['arch']['embed_dims']
            parts['backbone']['ln1.weight'] = torch.ones(C)
            parts['backbone']['ln1.bias'] = torch.zeros(C)
        prefix = '' if None in branches else RELEASE_BRANCH_PREFIXES[name]
        dropped += [prefix + k for k in d]
        for part, tensors in parts.items():
            state_dict.update((f'{place}{part}.{k}', v.detach().clone().contiguous())
                              for k, v in tensors.items())
        infos[place] = info
    shapes = {place: release_model_kwargs(i) for place, i in infos.items()}
    if len({repr(k) for k in shapes.values()}) > 1:
        raise ValueError(f'{source}: student and teacher differ in architecture: {shapes}')
    if target == 'algorithm':
        state_dict['teacher_initialized'] = torch.tensor(True)
    info = infos['']
    kwargs = release_model_kwargs(info, num_heads=num_heads,
                                  final_norm=add_final_norm or info['arch']['final_norm'])
    meta = dict(
        converter='tools/model_converters/vit2cotap.py',
        src_format='cotap-release',
        target=target,
        layout=layout,
        branches={('filtered' if target == 'filtered' else place.rstrip('.') or 'student'):
                  ('the single ViT' if None in branches else RELEASE_BRANCH_PREFIXES[name] + '*')
                  for place, name in places.items()},
        dropped_keys=sorted(set(dropped)),
        unused_branches=[RELEASE_BRANCH_PREFIXES[b] + '*' for b in branches
                         if b is not None and b not in places.values()],
        initialised_keys=[f'{p}backbone.ln1.{w}' for p in places for w in ('weight', 'bias')]
        if add_final_norm else [],
        arch=info['arch'],
        weight_g_max_abs_dev={n: info[n]['weight_g_max_abs_dev'] for n in RELEASE_HEADS.values()
                              if n in info},
        cotap_vit_kwargs={k: v for k, v in kwargs['backbone'].items() if k != 'type'},
        filtered_vit_kwargs={k: v for k, v in kwargs['filtered_vit'].items() if k != 'type'},
    )
    if target == 'algorithm':
        meta['cotap_model_kwargs'] = {k: v for k, v in kwargs.items() if k != 'filtered_vit'}
    return dict(state_dict=state_dict, meta=meta)

"""Convert a DINO / iBOT / DINOv2 / timm ViT or a released CoTAP checkpoint into one our configs load.

Output (ViT formats; released CoTAP checkpoints: see below):
``{'state_dict': {'backbone.<mmpretrain ViT key>': tensor, ...}, 'meta': {...plain data}}``, loadable with ``torch.load(..., weights_only=True)``, e.g. by
``model.backbone.init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone.')`` or an
algorithm's ``init_cfg`` / ``load_from``.

Usage::

    python tools/model_converters/vit2cotap.py dino_deitsmall16_pretrain.pth dino_vits16_cotap.pth
    python tools/model_converters/vit2cotap.py ibot_checkpoint_teacher.pth out.pth --src-format ibot
    python tools/model_converters/vit2cotap.py dinov2_vits14_pretrain.pth dinov2_vits14_cotap.pth

DINOv2 ViT-S/B/L/14 (LayerScale) and ViT-g/14 (SwiGLU) are supported; the ``_reg4`` variants (register
tokens) are refused: our ViT has no register tokens. The printed / ``meta['cotap_vit_kwargs']``
constructor arguments rebuild the matching :class:`CoTAPViT` (e.g. ``patch_size=14, img_size=518,
layer_scale_init_value=1e-5`` for DINOv2; the number of heads assumes head dim 64).

Sources are read with ``weights_only=True``; ``argparse.Namespace`` (stored as ``'args'`` in DINO/iBOT
full checkpoints) is allowed. A file needing more has to be trusted explicitly with
``--trust-checkpoint`` (full unpickling can run arbitrary code).

**Released CoTAP checkpoints** (``--src-format cotap-release``; the ``.ckpt`` files of the official
code, github.com/KID-7391/CoTAP; key layout in
:mod:`cotap_mm.models.backbones.cotap_release_mapping`): the ViT, the object-aware filter
(``kernel``, ``norm_in``, ``norm_out_patch``, ``norm_out_cls``) and the two projection heads, of the
student (``net.model.*``) and the EMA teacher (``net_teacher.model.*``)::

    # a full CoTAP algorithm checkpoint (student + teacher + heads), for load_from
    python tools/model_converters/vit2cotap.py dino+cotap.ckpt cotap_vits16_release.pth \
        --src-format cotap-release --target algorithm
    # ViT + filter of one branch for CoTAPFilteredViT (mmseg probes; init_cfg prefix '')
    python tools/model_converters/vit2cotap.py dino+cotap.ckpt cotap_vits16_release_filtered.pth \
        --src-format cotap-release --target filtered [--branch teacher]

* ``--target algorithm`` (default): ``backbone.*``, ``neck.*``, ``patch_head.*``, ``cls_head.*`` from
  the student, ``teacher.<same>.*`` from the teacher (``--branch student|teacher`` puts that one
  branch in both; a state dict of a single ViT goes to both), ``teacher_initialized = True`` (so
  ``EMATeacherHook`` keeps the imported teacher) and ``neck.prototypes_initialized = True`` (so
  CoTAP does not re-run k-means). Load it with ``load_from`` into ``CoTAP`` built with the printed
  kwargs. Not in the release and left to the model's initial values: the prototype bank
  (``proto_bank.*``: empty), the Sinkhorn queues
  (``patch_queue.*``, ``cls_queue.*``: empty), the step counter ``loss_iter`` (0: the clustering
  terms start after ``cluster_start_iter`` steps as in a fresh run) and loss buffers such as
  ``cls_loss.center`` (the release saves no bank or queue either: plain attributes).
* ``--target filtered``: ``backbone.*`` + ``neck.*`` of one branch (default ``--branch student``:
  the release evaluates ``net``, the student, in ``train.py``'s test path), loadable by
  ``CoTAPFilteredViT(init_cfg=dict(type='Pretrained', checkpoint=DST, prefix=''))``.

The release's ViT has no final norm: the printed kwargs carry ``final_norm=False``, or
``--add-final-norm`` writes a freshly initialised ``backbone.ln1`` (weight 1, bias 0, listed in
``meta['initialised_keys']``) for configs with the default ``final_norm=True`` (neither CoTAP's
filter path nor ``CoTAPFilteredViT`` reads it). ``meta`` records the branches used, the dropped keys
(the filter LayerNorms every released block builds but only the last uses, ``loss_fn.*`` /
``tester.*``, the heads for the filtered target), the branch not used (``unused_branches``) and the
constructor kwargs. The release feeds raw
[0, 1] images and normalises them inside the model with ImageNet mean / std, our data preprocessors
do the same outside (``mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]`` on 0-255).

The released ``.ckpt`` files are PyTorch-Lightning checkpoints whose ``hyper_parameters`` pickle the
training config (Lightning / OmegaConf classes). For this format, unless ``--trust-checkpoint``, the
file is read with ``weights_only=True`` and every class torch does not allow there is replaced by an
inert ``OrderedDict`` placeholder (its code is never imported or run; torch still refuses ``os`` /
``sys`` globals); the replaced names are printed and recorded in ``meta['placeholder_globals']``.
Only the tensors of ``state_dict`` are used.
"""
import argparse
import os
import os.path as osp
import sys
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import torch

try:
    import cotap_mm  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))
from cotap_mm.models.backbones.cotap_release_mapping import (  # noqa: E402
    RELEASE_BRANCH_PREFIXES, RELEASE_HEADS, convert_release_branch, looks_like_cotap_release,
    release_model_kwargs, select_release_branch, split_release_checkpoint)
from cotap_mm.models.backbones.vit_key_mapping import (convert_dino_vit,  # noqa: E402
                                                       detect_key_format, infer_vit_arch,
                                                       map_dino_key, split_checkpoint,
                                                       vit_kwargs_from_arch)

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


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='DINO / iBOT / DINOv2 / timm / released CoTAP checkpoint file')
    parser.add_argument('dst', help='output checkpoint file')
    parser.add_argument('--src-format', choices=SRC_FORMATS, default='auto')
    parser.add_argument('--target', choices=TARGETS, default=None,
                        help='cotap-release only: algorithm (CoTAP, default) or filtered '
                        '(CoTAPFilteredViT)')
    parser.add_argument('--branch', choices=('teacher', 'student'), default=None,
                        help='branch of a teacher/student checkpoint (default: teacher; '
                        'cotap-release: student for --target filtered, both for algorithm)')
    parser.add_argument('--prefix', default=None,
                        help="key prefix (default 'backbone.'; not for cotap-release)")
    parser.add_argument('--add-final-norm', action='store_true',
                        help='cotap-release: write a fresh backbone.ln1 for final_norm=True configs')
    parser.add_argument('--num-heads', type=int, default=None,
                        help='heads recorded in meta cotap_vit_kwargs (default: embed_dims // 64)')
    parser.add_argument('--non-strict', action='store_true',
                        help='drop unknown keys instead of failing')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='load SRC with full unpickling (only for files you trust)')
    return parser.parse_args(argv)


def _main_release(args: argparse.Namespace) -> Dict[str, Any]:
    """``--src-format cotap-release``: load, convert, save, print the kwargs."""
    if args.prefix is not None:
        raise ValueError('--prefix does not apply to --src-format cotap-release (the targets fix '
                         'the keys: backbone./neck./heads./teacher.)')
    placeholders: List[str] = []
    if args.trust_checkpoint:
        ckpt = load_source(args.src, trust=True)
    else:
        if not osp.isfile(args.src):
            raise FileNotFoundError(f'source checkpoint {args.src} does not exist')
        ckpt, placeholders = load_with_placeholders(args.src)
    out = convert_release_checkpoint(ckpt, target=args.target or 'algorithm', branch=args.branch,
                                     strict=not args.non_strict, num_heads=args.num_heads,
                                     add_final_norm=args.add_final_norm,
                                     source=osp.basename(args.src))
    meta = out['meta']
    meta['src'] = osp.basename(args.src)
    meta['placeholder_globals'] = placeholders
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    torch.save(out, args.dst)
    if placeholders:
        print(f'Read {args.src} with weights_only=True; inert placeholders for: {placeholders}')
    print(f"Saved {len(out['state_dict'])} tensors to {args.dst} (target {meta['target']}, "
          f"{meta['layout']} layout, {meta['branches']}); dropped {len(meta['dropped_keys'])} "
          'keys (meta dropped_keys)' + (f"; not used: {meta['unused_branches']}"
                                        if meta['unused_branches'] else '') + '.')
    if meta['target'] == 'algorithm':
        print(f"CoTAP model kwargs: {meta['cotap_model_kwargs']}")
    print(f"CoTAPFilteredViT kwargs: {meta['filtered_vit_kwargs']}")
    if not meta['cotap_vit_kwargs']['final_norm']:
        print('The released ViT has no final norm: build it with final_norm=False, or convert '
              'with --add-final-norm for configs keeping final_norm=True.')
    return out


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.src_format == 'cotap-release':
        return _main_release(args)
    for flag, val in (('--target', args.target), ('--add-final-norm', args.add_final_norm or None)):
        if val is not None:
            raise ValueError(f'{flag} only applies to --src-format cotap-release')
    ckpt = load_source(args.src, trust=args.trust_checkpoint)
    out = convert_checkpoint(ckpt, src_format=args.src_format, branch=args.branch,
                             prefix=args.prefix, strict=not args.non_strict, num_heads=args.num_heads)
    out['meta']['src'] = osp.basename(args.src)
    dst_dir = osp.dirname(osp.abspath(args.dst))
    os.makedirs(dst_dir, exist_ok=True)
    torch.save(out, args.dst)
    arch = out['meta']['arch']
    print(f'Saved {len(out["state_dict"])} tensors to {args.dst} (embed_dims={arch["embed_dims"]}, '
          f'num_layers={arch["num_layers"]}, patch_size={arch["patch_size"]}); dropped '
          f'{len(out["meta"]["dropped_keys"])} head keys.')
    if 'cotap_vit_kwargs' in out['meta']:
        print(f"CoTAPViT kwargs: {out['meta']['cotap_vit_kwargs']}")
    return out


if __name__ == '__main__':
    try:
        main()
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        sys.exit(f'error: {e}')

"""Convert a DINO / iBOT / DINOv2 / timm ViT checkpoint into a checkpoint our configs load.

Output: ``{'state_dict': {'backbone.<mmpretrain ViT key>': tensor, ...}, 'meta': {...plain data}}``,
loadable with ``torch.load(..., weights_only=True)``, e.g. by
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
"""
import argparse
import os
import os.path as osp
import sys
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import torch

try:
    from cotap_mm.models.backbones.vit_key_mapping import (convert_dino_vit, detect_key_format,
                                                           infer_vit_arch, map_dino_key,
                                                           split_checkpoint, vit_kwargs_from_arch)
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))
    from cotap_mm.models.backbones.vit_key_mapping import (convert_dino_vit, detect_key_format,
                                                           infer_vit_arch, map_dino_key,
                                                           split_checkpoint, vit_kwargs_from_arch)

SRC_FORMATS = ('auto', 'dino', 'ibot', 'dinov2', 'timm')


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


def convert_checkpoint(ckpt: Any, src_format: str = 'auto', branch: str = 'teacher',
                       prefix: str = 'backbone.', strict: bool = True,
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
    if src_format == 'timm' and isinstance(ckpt, dict) and ('teacher' in ckpt or 'student' in ckpt):
        raise ValueError("src_format='timm' but the checkpoint has 'teacher'/'student' entries "
                         '(a DINO/iBOT checkpoint): use --src-format dino, ibot or auto')
    flat, dropped = split_checkpoint(ckpt, branch=branch)
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


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='DINO / iBOT / DINOv2 / timm checkpoint file')
    parser.add_argument('dst', help='output checkpoint file')
    parser.add_argument('--src-format', choices=SRC_FORMATS, default='auto')
    parser.add_argument('--branch', choices=('teacher', 'student'), default='teacher',
                        help='branch of a teacher/student checkpoint (default: teacher)')
    parser.add_argument('--prefix', default='backbone.', help="key prefix (default 'backbone.')")
    parser.add_argument('--num-heads', type=int, default=None,
                        help='heads recorded in meta cotap_vit_kwargs (default: embed_dims // 64)')
    parser.add_argument('--non-strict', action='store_true',
                        help='drop unknown keys instead of failing')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='load SRC with full unpickling (only for files you trust)')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
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

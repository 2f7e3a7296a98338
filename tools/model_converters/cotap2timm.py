"""Convert a cotap_mm ViT backbone to a timm ``VisionTransformer`` state dict, and back.

``--to timm`` (default): SRC is a published checkpoint (``publish_model.py``), a cotap_mm training
checkpoint (the EMA teacher's backbone by default, as in ``publish_model.py``; ``--keep-prefix
backbone.`` for the student) or a bare mmpretrain ViT state dict. DST is a flat timm state dict (no
classifier), loadable with ``model.load_state_dict(torch.load(DST))`` on a ``num_classes=0`` model or
``timm.create_model(NAME, num_classes=0, pretrained=True, pretrained_cfg_overlay=dict(file=DST))``;
the tool prints a matching NAME when the architecture is a standard one.

``--to cotap``: SRC is a timm ViT checkpoint; DST is ``{'state_dict': {'backbone.*'}, 'meta'}`` exactly
as written by ``vit2cotap.py --src-format timm`` (same code).

Usage::

    python tools/model_converters/cotap2timm.py cotap_vits16-1a2b3c4d.pth vit_small_cotap_timm.pth
    python tools/model_converters/cotap2timm.py vit_small_cotap_timm.pth back.pth --to cotap

Key mapping: :mod:`cotap_mm.models.backbones.vit_key_mapping` (``convert_to_timm`` /
``convert_dino_vit``); tensors are copied unchanged. Inputs are read with ``weights_only=True``.
"""
import argparse
import os
import os.path as osp
import sys
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional

try:
    import cotap_mm  # noqa: F401  (registers modules, installs the safe checkpoint loader)
except ModuleNotFoundError as err:  # not the project's environment, e.g. the system python
    sys.exit(f'tools/model_converters/cotap2timm.py: {err} in {sys.executable}: use the cotap_mm '
             'environment (`source .venv/bin/activate` after `make setup`, or .venv/bin/python)')
import torch  # noqa: E402

from cotap_mm.converters.vit_checkpoints import convert_checkpoint, load_source  # noqa: E402
from cotap_mm.models.backbones.vit_key_mapping import (convert_to_timm,  # noqa: E402
                                                       default_backbone_prefix,
                                                       detect_key_format, extract_prefixed,
                                                       infer_vit_arch)
from cotap_mm.utils.checkpoint import UnsafeCheckpointError  # noqa: E402
from cotap_mm.utils.checkpoint import load_checkpoint_file as load_checkpoint  # noqa: E402

_TIMM_SIZES = {192: 'tiny', 384: 'small', 768: 'base', 1024: 'large', 1536: 'giant'}


def select_backbone(ckpt: Any, keep_prefix: Optional[str] = None) -> 'OrderedDict[str, torch.Tensor]':
    """Loaded cotap_mm checkpoint / mmpretrain ViT state dict -> the backbone's bare mmpretrain keys.

    Args:
        ckpt: ``{'state_dict': ...}`` (published or training checkpoint) or a bare state dict.
        keep_prefix (str, optional): prefix of the backbone in ``state_dict``. None = ``teacher.backbone.``
            if present, else ``backbone.``, else (no prefix at all) the bare mmpretrain keys.

    Raises:
        ValueError: no backbone found (the prefixes seen are listed) or keys without timm counterpart.
    """
    if not isinstance(ckpt, Mapping):
        raise ValueError(f'expected a checkpoint dict, got {type(ckpt).__name__}')
    sd = ckpt.get('state_dict', ckpt)
    if not isinstance(sd, Mapping):
        raise ValueError(f"checkpoint['state_dict'] is a {type(sd).__name__}, not a dict")
    sd = OrderedDict((k, v) for k, v in sd.items() if isinstance(v, torch.Tensor))
    if keep_prefix is None and detect_key_format(sd) == 'mmpretrain' \
            and any(k.startswith('layers.') for k in sd):
        flat = sd  # bare mmpretrain ViT state dict
    else:
        prefix = keep_prefix or default_backbone_prefix(sd)
        flat = extract_prefixed(sd, prefix, out_prefix='')
    if detect_key_format(flat) != 'mmpretrain':
        raise ValueError('the selected tensors are not an mmpretrain ViT (no `layers.*` keys); first keys: '
                         f'{list(flat)[:8]}')
    return flat


def cotap_to_timm(ckpt: Any, keep_prefix: Optional[str] = None) -> 'OrderedDict[str, torch.Tensor]':
    """:func:`select_backbone` then ``convert_to_timm``: a flat timm ViT state dict (no classifier)."""
    return convert_to_timm(select_backbone(ckpt, keep_prefix))


def suggest_timm_model(info: Mapping[str, Any]) -> Optional[str]:
    """A timm model name with this architecture (from :func:`infer_vit_arch`), or None."""
    size = _TIMM_SIZES.get(info['embed_dims'])
    depth = {'tiny': 12, 'small': 12, 'base': 12, 'large': 24, 'giant': 40}.get(size)
    if size is None or info['num_layers'] != depth or not info['final_norm']:
        return None
    p, img = info['patch_size'], info['pos_embed_grid'][0] * info['patch_size']
    if info.get('layer_scale') and p == 14:
        return f'vit_{size}_patch14_dinov2'
    if info.get('layer_scale') or info.get('ffn_type', 'origin') != 'origin' or size == 'giant':
        return None
    return f'vit_{size}_patch{p}_{img}' if img in (224, 384) else f'vit_{size}_patch{p}_224'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='cotap_mm checkpoint (--to timm) or timm checkpoint (--to cotap)')
    parser.add_argument('dst', help='output file')
    parser.add_argument('--to', choices=('timm', 'cotap'), default='timm')
    parser.add_argument('--keep-prefix', default=None,
                        help="--to timm: backbone prefix in SRC's state_dict (default: "
                        "'teacher.backbone.' if present, else 'backbone.')")
    parser.add_argument('--prefix', default='backbone.',
                        help="--to cotap: key prefix of the output (default 'backbone.')")
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='load SRC with full unpickling (only for files you trust)')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    if args.to == 'cotap':
        out = convert_checkpoint(load_source(args.src, trust=args.trust_checkpoint), src_format='timm',
                                 prefix=args.prefix)
        out['meta']['converter'] = 'tools/model_converters/cotap2timm.py --to cotap'
        out['meta']['src'] = osp.basename(args.src)
        torch.save(out, args.dst)
        print(f"Saved {len(out['state_dict'])} tensors ({args.prefix}*) to {args.dst}")
        return out
    ckpt = load_checkpoint(args.src, trust=args.trust_checkpoint)
    flat = select_backbone(ckpt, keep_prefix=args.keep_prefix)
    out = OrderedDict((k, v.detach().clone().contiguous()) for k, v in convert_to_timm(flat).items())
    torch.save(out, args.dst)
    name = (suggest_timm_model(infer_vit_arch(flat))
            if {'pos_embed', 'patch_embed.projection.weight'} <= set(flat) else None)
    print(f'Saved {len(out)} timm tensors to {args.dst}')
    if name:
        print(f'Load with: timm.create_model({name!r}, num_classes=0, pretrained=True, '
              f'pretrained_cfg_overlay=dict(file={args.dst!r}))')
    return out


if __name__ == '__main__':
    try:
        main()
    except (FileNotFoundError, ValueError, UnsafeCheckpointError, RuntimeError) as e:
        sys.exit(f'error: {e}')

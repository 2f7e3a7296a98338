"""Pure functions converting DINO / iBOT / timm ViT state dicts to mmpretrain ``VisionTransformer`` keys.

DINO (https://github.com/facebookresearch/dino), iBOT (https://github.com/bytedance/ibot) and timm
(``timm.models.vision_transformer.VisionTransformer``) share one parameter layout::

    cls_token, pos_embed, patch_embed.proj.{weight,bias},
    blocks.{i}.norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2, norm.{weight,bias}

mmpretrain's :class:`~mmpretrain.models.backbones.VisionTransformer` (and so
:class:`~cotap_mm.models.backbones.cotap_vit.CoTAPViT`) names them::

    cls_token, pos_embed, patch_embed.projection.{weight,bias},
    layers.{i}.ln1 / attn.qkv / attn.proj / ln2 / ffn.layers.0.0 / ffn.layers.1, ln1 (final norm)

Tensors are copied unchanged (both sides store ``qkv`` as one ``Linear(C, 3C)`` in q, k, v order).

Checkpoint containers handled by :func:`unwrap_checkpoint`:

* DINO full checkpoint: ``{'teacher': {'backbone.*', 'head.*'}, 'student': {'module.backbone.*', ...},
  'optimizer': ..., 'args': Namespace}``; DINO released backbone weights: a flat dict.
* iBOT: ``{'state_dict': {...}}`` or ``{'teacher': {...}}`` with ``backbone.`` or
  ``module.backbone.`` prefixes; iBOT's backbone also has ``masked_embed`` (dropped).
* timm: a flat dict, or under ``'state_dict'`` / ``'model'``; classifier ``head.*`` / ``fc_norm.*`` dropped.
"""
import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

__all__ = [
    'unwrap_checkpoint', 'split_checkpoint', 'map_dino_key', 'convert_dino_vit', 'convert_to_timm', 'infer_vit_arch',
    'detect_key_format'
]

# (pattern on DINO/timm key, replacement giving the mmpretrain key)
_TO_MM: List[Tuple[re.Pattern, str]] = [(re.compile(p), r) for p, r in [
    (r'^cls_token$', 'cls_token'),
    (r'^pos_embed$', 'pos_embed'),
    (r'^patch_embed\.proj\.(weight|bias)$', r'patch_embed.projection.\1'),
    (r'^blocks\.(\d+)\.norm1\.(weight|bias)$', r'layers.\1.ln1.\2'),
    (r'^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$', r'layers.\1.attn.qkv.\2'),
    (r'^blocks\.(\d+)\.attn\.proj\.(weight|bias)$', r'layers.\1.attn.proj.\2'),
    (r'^blocks\.(\d+)\.norm2\.(weight|bias)$', r'layers.\1.ln2.\2'),
    (r'^blocks\.(\d+)\.mlp\.fc1\.(weight|bias)$', r'layers.\1.ffn.layers.0.0.\2'),
    (r'^blocks\.(\d+)\.mlp\.fc2\.(weight|bias)$', r'layers.\1.ffn.layers.1.\2'),
    # LayerScale (not in DINO/iBOT ViTs; DeiT-3 / DINOv2-style timm models)
    (r'^blocks\.(\d+)\.ls1\.gamma$', r'layers.\1.attn.gamma1.weight'),
    (r'^blocks\.(\d+)\.ls2\.gamma$', r'layers.\1.ffn.gamma2.weight'),
    (r'^norm\.(weight|bias)$', r'ln1.\1'),
]]

_TO_TIMM: List[Tuple[re.Pattern, str]] = [(re.compile(p), r) for p, r in [
    (r'^cls_token$', 'cls_token'),
    (r'^pos_embed$', 'pos_embed'),
    (r'^patch_embed\.projection\.(weight|bias)$', r'patch_embed.proj.\1'),
    (r'^layers\.(\d+)\.ln1\.(weight|bias)$', r'blocks.\1.norm1.\2'),
    (r'^layers\.(\d+)\.attn\.qkv\.(weight|bias)$', r'blocks.\1.attn.qkv.\2'),
    (r'^layers\.(\d+)\.attn\.proj\.(weight|bias)$', r'blocks.\1.attn.proj.\2'),
    (r'^layers\.(\d+)\.ln2\.(weight|bias)$', r'blocks.\1.norm2.\2'),
    (r'^layers\.(\d+)\.ffn\.layers\.0\.0\.(weight|bias)$', r'blocks.\1.mlp.fc1.\2'),
    (r'^layers\.(\d+)\.ffn\.layers\.1\.(weight|bias)$', r'blocks.\1.mlp.fc2.\2'),
    (r'^layers\.(\d+)\.attn\.gamma1\.weight$', r'blocks.\1.ls1.gamma'),
    (r'^layers\.(\d+)\.ffn\.gamma2\.weight$', r'blocks.\1.ls2.gamma'),
    (r'^ln1\.(weight|bias)$', r'norm.\1'),
]]

# Source keys that belong to heads / pretext-task parts, not to the ViT trunk: dropped.
_IGNORED = re.compile(r'^(head|heads|head_drop|fc_norm|masked_embed|mask_token|last_layer)(\.|$)')

_NESTED_KEYS = ('state_dict', 'model', 'module')


def _is_state_dict(d: Mapping) -> bool:
    return len(d) > 0 and all(isinstance(v, torch.Tensor) for v in d.values())


def split_checkpoint(ckpt: Mapping[str, Any],
                     branch: str = 'teacher') -> Tuple['OrderedDict[str, torch.Tensor]', List[str]]:
    """Like :func:`unwrap_checkpoint`, also returning the tensor keys left out (heads of the branch).

    Returns:
        tuple: (trunk state dict, sorted list of dropped tensor keys as named in the container).
    """
    if not isinstance(ckpt, Mapping):
        raise TypeError(f'ckpt must be a mapping (a loaded checkpoint), got {type(ckpt).__name__}')
    if branch not in ('teacher', 'student'):
        raise ValueError(f"branch must be 'teacher' or 'student', got {branch!r}")
    d: Mapping = ckpt
    for _ in range(4):  # bounded descent through containers
        if branch in d and isinstance(d[branch], Mapping):
            d = d[branch]
            continue
        nxt = next((d[k] for k in _NESTED_KEYS if k in d and isinstance(d[k], Mapping)), None)
        if nxt is not None and not _is_state_dict(d):
            d = nxt
            continue
        break
    tensors = OrderedDict((k, v) for k, v in d.items() if isinstance(v, torch.Tensor))
    if not tensors:
        raise ValueError('no tensor state dict found in checkpoint (looked under '
                         f"'{branch}', {', '.join(repr(k) for k in _NESTED_KEYS)}); top-level keys: "
                         f'{sorted(map(str, ckpt.keys()))[:20]}')
    dropped: List[str] = []
    if all(k.startswith('module.') for k in tensors):
        tensors = OrderedDict((k[len('module.'):], v) for k, v in tensors.items())
    if any(k.startswith('backbone.') for k in tensors):
        dropped = [k for k in tensors if not k.startswith('backbone.')]
        tensors = OrderedDict(
            (k[len('backbone.'):], v) for k, v in tensors.items() if k.startswith('backbone.'))
    return tensors, sorted(dropped)


def unwrap_checkpoint(ckpt: Mapping[str, Any], branch: str = 'teacher') -> 'OrderedDict[str, torch.Tensor]':
    """Find the ViT trunk's flat state dict inside a DINO / iBOT / timm checkpoint.

    Args:
        ckpt (Mapping): what ``torch.load`` returned.
        branch (str): for self-distillation checkpoints holding ``'teacher'`` and ``'student'``,
            which one to take. Defaults to ``'teacher'`` (the weights DINO/iBOT release).

    Returns:
        OrderedDict[str, Tensor]: tensors only, with ``module.`` and ``backbone.`` prefixes removed;
        when some keys carry ``backbone.`` only those are kept (the rest are heads).

    Raises:
        TypeError: ``ckpt`` is not a mapping.
        ValueError: ``branch`` is not 'teacher'/'student', or no tensor dict is found.
    """
    return split_checkpoint(ckpt, branch)[0]


def map_dino_key(key: str) -> Optional[str]:
    """Map one DINO/iBOT/timm trunk key to its mmpretrain key.

    Returns:
        str | None: the mmpretrain key, or ``None`` for head / pretext keys that are dropped
        (``head.*``, ``fc_norm.*``, ``masked_embed``, ...).

    Raises:
        KeyError: the key is neither a ViT trunk key nor a known droppable key.
    """
    for pattern, repl in _TO_MM:
        if pattern.match(key):
            return pattern.sub(repl, key)
    if _IGNORED.match(key):
        return None
    raise KeyError(key)


def detect_key_format(state_dict: Mapping[str, Any]) -> str:
    """Return ``'timm'`` (DINO/iBOT/timm names), ``'mmpretrain'``, or ``'unknown'`` for a flat dict."""
    keys = list(state_dict.keys())
    if any(k.startswith('blocks.') for k in keys):
        return 'timm'
    if any(k.startswith('layers.') for k in keys):
        return 'mmpretrain'
    return 'unknown'


def convert_dino_vit(ckpt: Mapping[str, Any],
                     strict: bool = True,
                     branch: str = 'teacher') -> 'OrderedDict[str, torch.Tensor]':
    """Convert a DINO / iBOT / timm ViT checkpoint (or flat state dict) to mmpretrain ViT keys.

    Args:
        ckpt (Mapping): a flat state dict or any container accepted by :func:`unwrap_checkpoint`.
        strict (bool): raise on keys that are neither trunk nor known head keys. If False they are
            dropped. Defaults to True.
        branch (str): 'teacher' or 'student' (see :func:`unwrap_checkpoint`). Defaults to 'teacher'.

    Returns:
        OrderedDict[str, Tensor]: mmpretrain ``VisionTransformer`` keys (no ``backbone.`` prefix),
        final norm as ``ln1.*``; same tensor objects as the input.

    Raises:
        ValueError: the dict is already in mmpretrain format, or has unknown keys and ``strict``.
    """
    sd = unwrap_checkpoint(ckpt, branch=branch)
    if detect_key_format(sd) == 'mmpretrain':
        raise ValueError('ckpt is already in mmpretrain VisionTransformer format (keys `layers.*`); '
                         'expected DINO/iBOT/timm keys `blocks.*`')
    out: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    unknown = []
    for k, v in sd.items():
        try:
            new = map_dino_key(k)
        except KeyError:
            unknown.append(k)
            continue
        if new is not None:
            out[new] = v
    if unknown and strict:
        raise ValueError(f'ckpt has {len(unknown)} keys that are not DINO/iBOT/timm ViT keys: '
                         f'{unknown[:10]}; pass strict=False to drop them')
    if 'pos_embed' not in out or 'patch_embed.projection.weight' not in out:
        raise ValueError('ckpt lacks `pos_embed` or `patch_embed.proj.weight`: not a ViT checkpoint '
                         f'(first keys: {list(sd.keys())[:10]})')
    return out


def convert_to_timm(state_dict: Mapping[str, torch.Tensor],
                    prefix: str = '') -> 'OrderedDict[str, torch.Tensor]':
    """Inverse of :func:`convert_dino_vit`: mmpretrain ViT keys -> DINO/timm keys.

    Args:
        state_dict (Mapping[str, Tensor]): mmpretrain ``VisionTransformer`` state dict.
        prefix (str): keep only keys starting with this prefix (e.g. ``'backbone.'``) and strip it.
            Defaults to ''.

    Returns:
        OrderedDict[str, Tensor]: keys loadable into ``timm`` ``VisionTransformer(num_classes=0)``
        or DINO's ``vit_small``/``vit_base``.

    Raises:
        ValueError: a key has no timm counterpart (e.g. ``ln2`` of ``out_type='avg_featmap'``).
    """
    out: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    unknown = []
    for k, v in state_dict.items():
        if prefix:
            if not k.startswith(prefix):
                continue
            k = k[len(prefix):]
        for pattern, repl in _TO_TIMM:
            if pattern.match(k):
                out[pattern.sub(repl, k)] = v
                break
        else:
            unknown.append(k)
    if unknown:
        raise ValueError(f'state_dict has keys without a timm counterpart: {unknown[:10]}')
    return out


def infer_vit_arch(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """Read architecture numbers off an mmpretrain-format ViT state dict (for checkpoint ``meta``).

    Returns:
        dict: ``embed_dims``, ``num_layers``, ``feedforward_channels``, ``patch_size``,
        ``pos_embed_grid`` ([h, w], assumed square), ``final_norm`` and ``num_heads_guess``
        (embed_dims // 64: the DINO/iBOT/DeiT convention; the weights do not encode it).
    """
    w = state_dict['patch_embed.projection.weight']
    embed_dims = int(w.shape[0])
    layer_ids = {int(m.group(1)) for k in state_dict for m in [re.match(r'^layers\.(\d+)\.', k)] if m}
    num_layers = max(layer_ids) + 1 if layer_ids else 0
    ffn = state_dict.get('layers.0.ffn.layers.0.0.weight')
    n_pos = int(state_dict['pos_embed'].shape[1]) - 1
    side = int(round(n_pos**0.5))
    return dict(
        embed_dims=embed_dims,
        num_layers=num_layers,
        feedforward_channels=int(ffn.shape[0]) if ffn is not None else None,
        patch_size=int(w.shape[-1]),
        pos_embed_grid=[side, side],
        final_norm='ln1.weight' in state_dict,
        num_heads_guess=max(embed_dims // 64, 1),
    )

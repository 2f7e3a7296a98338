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

DINOv2 (https://github.com/facebookresearch/dinov2) uses the same names plus LayerScale
``blocks.{i}.ls1.gamma`` / ``ls2.gamma`` (mmpretrain: ``layers.{i}.attn.gamma1.weight`` /
``ffn.gamma2.weight``, built with ``layer_scale_init_value > 0``), ``mask_token`` (dropped), patch 14 with
a 37x37 (+1) pos-embed at 518 px, and for ViT-g the SwiGLU FFN ``mlp.w12`` / ``mlp.w3`` (mmpretrain
``ffn.w12`` / ``ffn.w3`` with ``layer_cfgs=dict(ffn_type='swiglu_fused')``; timm stores it packed as
``mlp.fc1`` / ``mlp.fc2``, see :func:`unpack_timm_swiglu`). Training checkpoints with ``block_chunks`` name
blocks ``blocks.{chunk}.{i}`` (:func:`unchunk_blocks`). Register tokens (``register_tokens``, the ``_reg4``
models) have no counterpart and are refused (:func:`check_representable`).
:func:`infer_vit_arch` + :func:`vit_kwargs_from_arch` give the matching :class:`CoTAPViT` kwargs.

Checkpoint containers handled by :func:`unwrap_checkpoint`:

* DINO full checkpoint: ``{'teacher': {'backbone.*', 'head.*'}, 'student': {'module.backbone.*', ...},
  'optimizer': ..., 'args': Namespace}``; DINO released backbone weights: a flat dict.
* iBOT: ``{'state_dict': {...}}`` or ``{'teacher': {...}}`` with ``backbone.`` or
  ``module.backbone.`` prefixes; iBOT's backbone also has ``masked_embed`` (dropped).
* timm: a flat dict, or under ``'state_dict'`` / ``'model'``; classifier ``head.*`` / ``fc_norm.*`` dropped.
* DINOv2: released backbones are flat dicts; ``teacher_checkpoint.pth`` is ``{'teacher': {'backbone.*',
  'dino_head.*', 'ibot_head.*'}}``; full training checkpoints are ``{'model': {'teacher.backbone.*',
  'student.backbone.*', ...}, 'optimizer': ...}``.
* cotap_mm training checkpoints: ``{'state_dict': {'backbone.*' (student), 'teacher.backbone.*', ...}}``
  (mmpretrain keys already; :func:`default_backbone_prefix` / :func:`extract_prefixed` slim them).
"""
import re
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

__all__ = [
    'unwrap_checkpoint', 'split_checkpoint', 'map_dino_key', 'convert_dino_vit', 'convert_to_timm', 'infer_vit_arch',
    'detect_key_format', 'check_representable', 'unchunk_blocks', 'unpack_timm_swiglu',
    'vit_kwargs_from_arch', 'key_prefixes', 'default_backbone_prefix', 'extract_prefixed', 'BACKBONE_PREFIXES'
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
    # SwiGLU FFN of DINOv2 ViT-g/14 (``SwiGLUFFNFused``; mmpretrain ``ffn_type='swiglu_fused'``)
    (r'^blocks\.(\d+)\.mlp\.w12\.(weight|bias)$', r'layers.\1.ffn.w12.\2'),
    (r'^blocks\.(\d+)\.mlp\.w3\.(weight|bias)$', r'layers.\1.ffn.w3.\2'),
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
    # timm packs the SwiGLU of its ``vit_giant_patch14_dinov2`` as ``mlp.fc1`` (= w12) / ``mlp.fc2`` (= w3)
    (r'^layers\.(\d+)\.ffn\.w12\.(weight|bias)$', r'blocks.\1.mlp.fc1.\2'),
    (r'^layers\.(\d+)\.ffn\.w3\.(weight|bias)$', r'blocks.\1.mlp.fc2.\2'),
    (r'^layers\.(\d+)\.attn\.gamma1\.weight$', r'blocks.\1.ls1.gamma'),
    (r'^layers\.(\d+)\.ffn\.gamma2\.weight$', r'blocks.\1.ls2.gamma'),
    (r'^ln1\.(weight|bias)$', r'norm.\1'),
]]

# Source keys that belong to heads / pretext-task parts, not to the ViT trunk: dropped.
_IGNORED = re.compile(r'^(head|heads|head_drop|fc_norm|masked_embed|mask_token|last_layer)(\.|$)')

_NESTED_KEYS = ('state_dict', 'model', 'module')


def _is_state_dict(d: Mapping) -> bool:
    return len(d) > 0 and all(isinstance(v, torch.Tensor) for v in d.values())


def _strip_module(tensors: 'OrderedDict[str, torch.Tensor]') -> 'OrderedDict[str, torch.Tensor]':
    if tensors and all(k.startswith('module.') for k in tensors):
        return OrderedDict((k[len('module.'):], v) for k, v in tensors.items())
    return tensors


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
    tensors = _strip_module(tensors)
    # Flat teacher/student containers: DINOv2's ``model`` dict (``teacher.backbone.*``,
    # ``student.backbone.*``) and cotap_mm's own checkpoints (``backbone.*`` = student,
    # ``teacher.backbone.*`` = EMA teacher).
    own, other = branch + '.', ('student' if branch == 'teacher' else 'teacher') + '.'
    if any(k.startswith(own) for k in tensors):
        dropped += [k for k in tensors if not k.startswith(own)]
        tensors = _strip_module(
            OrderedDict((k[len(own):], v) for k, v in tensors.items() if k.startswith(own)))
    elif branch == 'student' and any(k.startswith(other) for k in tensors):
        dropped += [k for k in tensors if k.startswith(other)]
        tensors = OrderedDict((k, v) for k, v in tensors.items() if not k.startswith(other))
    if any(k.startswith('backbone.') for k in tensors):
        dropped += [k for k in tensors if not k.startswith('backbone.')]
        tensors = OrderedDict(
            (k[len('backbone.'):], v) for k, v in tensors.items() if k.startswith('backbone.'))
    return tensors, sorted(dropped)


def unwrap_checkpoint(ckpt: Mapping[str, Any], branch: str = 'teacher') -> 'OrderedDict[str, torch.Tensor]':
    """Find the ViT trunk's flat state dict inside a DINO / iBOT / timm checkpoint.

    Args:
        ckpt (Mapping): what ``torch.load`` returned.
        branch (str): for self-distillation checkpoints holding ``'teacher'`` and ``'student'``
            (sub-dicts as in DINO/iBOT, or key prefixes ``teacher.`` / ``student.`` as in DINOv2's
            ``model`` dict; in cotap_mm checkpoints the student has no prefix), which one to take.
            Defaults to ``'teacher'`` (the weights DINO/iBOT/DINOv2 release).

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
    key = _CHUNKED.sub(r'blocks.\1.', key)
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


# Trunk parts that mmpretrain's VisionTransformer (hence CoTAPViT) has no place for: refused even
# with strict=False, because dropping them silently would change the features.
_UNREPRESENTABLE = {
    'register_tokens': 'DINOv2 register tokens (the `_reg4` checkpoints)',
    'reg_token': 'timm register tokens (`*_reg4` models)',
}


def check_representable(state_dict: Mapping[str, Any]) -> None:
    """Raise if a DINO/iBOT/DINOv2/timm trunk has parts our ViT cannot represent (register tokens).

    mmpretrain's ``VisionTransformer`` (and :class:`CoTAPViT`, whose methods assume ``[CLS, patches]``
    token layouts) has no register tokens; DINOv2 inserts them between CLS and the patches after the
    pos-embed, so the weights cannot be used without them.

    Raises:
        ValueError: names the key, its shape and the checkpoint to use instead.
    """
    for key, what in _UNREPRESENTABLE.items():
        if key in state_dict:
            shape = tuple(getattr(state_dict[key], 'shape', ()))
            raise ValueError(
                f'checkpoint has `{key}` {shape}: {what} cannot be represented by mmpretrain\'s '
                'VisionTransformer / CoTAPViT (no register tokens between CLS and patch tokens). '
                'Use the variant without registers (e.g. dinov2_vits14_pretrain.pth instead of '
                'dinov2_vits14_reg4_pretrain.pth).')


_CHUNKED = re.compile(r'^blocks\.\d+\.(\d+)\.')


def unchunk_blocks(state_dict: Mapping[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """``blocks.{chunk}.{i}.*`` -> ``blocks.{i}.*`` (DINOv2 training checkpoints with ``block_chunks``).

    DINOv2 wraps its blocks in ``BlockChunk`` s for FSDP; chunk ``c`` pads the blocks of earlier chunks
    with ``nn.Identity``, so ``i`` is already the global block index. Other keys pass unchanged.
    """
    return OrderedDict((_CHUNKED.sub(r'blocks.\1.', k), v) for k, v in state_dict.items())


def unpack_timm_swiglu(state_dict: Mapping[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """timm's packed SwiGLU (``mlp.fc1`` = [x1; x2], ``mlp.fc2``) -> DINOv2's ``mlp.w12`` / ``mlp.w3``.

    timm's ``vit_giant_patch14_dinov2`` stores DINOv2's ``SwiGLUFFNFused`` (``silu(x1) * x2``) as
    ``SwiGLUPacked`` under the plain-MLP names. A block is recognised as packed when
    ``fc1.out_features == 2 * fc2.in_features`` (a plain MLP has them equal); the SiLU gate of
    timm's DINOv2 models is assumed (mmpretrain has no other gated FFN).
    """
    packed = set()
    for k, w1 in state_dict.items():
        m = re.match(r'^blocks\.(\d+)\.mlp\.fc1\.weight$', k)
        w2 = state_dict.get(f'blocks.{m.group(1)}.mlp.fc2.weight') if m else None
        if w2 is not None and w1.dim() == 2 and w2.dim() == 2 and w1.shape[0] == 2 * w2.shape[1]:
            packed.add(m.group(1))

    def rename(k: str) -> str:
        m = re.match(r'^blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$', k)
        if m and m.group(1) in packed:
            return f"blocks.{m.group(1)}.mlp.{'w12' if m.group(2) == 'fc1' else 'w3'}.{m.group(3)}"
        return k

    return OrderedDict((rename(k), v) for k, v in state_dict.items())


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
    check_representable(sd)
    sd = unpack_timm_swiglu(unchunk_blocks(sd))
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


def _swiglu_feedforward_channels(hidden: int, embed_dims: int) -> Optional[int]:
    """``feedforward_channels`` giving mmpretrain's ``SwiGLUFFNFused`` this hidden width, or None.

    ``SwiGLUFFNFused`` (like DINOv2's) uses ``(int(ffc * 2 / 3) + 7) // 8 * 8`` hidden units; DINOv2
    passes ``ffc = 4 * embed_dims`` (ViT-g: 6144 -> 4096), which is preferred when it fits.
    """
    def width(ffc: int) -> int:
        return (int(ffc * 2 / 3) + 7) // 8 * 8

    if width(4 * embed_dims) == hidden:
        return 4 * embed_dims
    return next((f for f in range(hidden, 2 * hidden + 16) if width(f) == hidden), None)


def infer_vit_arch(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """Read architecture numbers off an mmpretrain-format ViT state dict (for checkpoint ``meta``).

    Returns:
        dict: ``embed_dims``, ``num_layers``, ``feedforward_channels``, ``patch_size``,
        ``pos_embed_grid`` ([h, w], assumed square), ``final_norm``, ``num_heads_guess``
        (embed_dims // 64: the DINO/iBOT/DINOv2/DeiT convention; the weights do not encode it),
        ``layer_scale`` (LayerScale ``gamma`` present, as in DINOv2) and ``ffn_type``
        ('origin' or 'swiglu_fused'; for the latter ``feedforward_channels`` is the value to pass
        to mmpretrain, e.g. 6144 for ViT-g, and ``swiglu_hidden`` the actual hidden width).
    """
    w = state_dict['patch_embed.projection.weight']
    embed_dims = int(w.shape[0])
    layer_ids = {int(m.group(1)) for k in state_dict for m in [re.match(r'^layers\.(\d+)\.', k)] if m}
    num_layers = max(layer_ids) + 1 if layer_ids else 0
    ffn = state_dict.get('layers.0.ffn.layers.0.0.weight')
    w3 = state_dict.get('layers.0.ffn.w3.weight')
    n_pos = int(state_dict['pos_embed'].shape[1]) - 1
    side = int(round(n_pos**0.5))
    info = dict(
        embed_dims=embed_dims,
        num_layers=num_layers,
        feedforward_channels=int(ffn.shape[0]) if ffn is not None else None,
        patch_size=int(w.shape[-1]),
        pos_embed_grid=[side, side],
        final_norm='ln1.weight' in state_dict,
        num_heads_guess=max(embed_dims // 64, 1),
        layer_scale='layers.0.attn.gamma1.weight' in state_dict,
        ffn_type='swiglu_fused' if w3 is not None else 'origin',
    )
    if w3 is not None:
        info['swiglu_hidden'] = int(w3.shape[1])
        info['feedforward_channels'] = _swiglu_feedforward_channels(int(w3.shape[1]), embed_dims)
    return info


def vit_kwargs_from_arch(info: Mapping[str, Any], num_heads: Optional[int] = None) -> Dict[str, Any]:
    """Constructor kwargs of :class:`CoTAPViT` / mmpretrain ``VisionTransformer`` for :func:`infer_vit_arch`.

    Args:
        info (Mapping): output of :func:`infer_vit_arch`.
        num_heads (int, optional): defaults to ``info['num_heads_guess']`` (head dim 64).

    Returns:
        dict: ``arch`` (dict), ``img_size`` (pos-embed grid x patch), ``patch_size``,
        ``layer_scale_init_value`` (1e-5 when LayerScale is present, its value is then overwritten
        by the checkpoint; 0 otherwise), ``final_norm``, and ``layer_cfgs=dict(ffn_type=
        'swiglu_fused')`` for SwiGLU trunks.

    Raises:
        ValueError: a SwiGLU hidden width that mmpretrain's ``SwiGLUFFNFused`` cannot produce.
    """
    if info['feedforward_channels'] is None:
        raise ValueError(f"cannot derive feedforward_channels from the checkpoint ({dict(info)}): "
                         "mmpretrain's SwiGLUFFNFused only makes hidden widths that are multiples of 8")
    kwargs: Dict[str, Any] = dict(
        arch=dict(embed_dims=info['embed_dims'], num_layers=info['num_layers'],
                  num_heads=int(num_heads or info['num_heads_guess']),
                  feedforward_channels=info['feedforward_channels']),
        img_size=int(info['pos_embed_grid'][0]) * int(info['patch_size']),
        patch_size=int(info['patch_size']),
        layer_scale_init_value=1e-5 if info.get('layer_scale') else 0.,
        final_norm=bool(info['final_norm']),
    )
    if info.get('ffn_type', 'origin') != 'origin':
        kwargs['layer_cfgs'] = dict(ffn_type=info['ffn_type'])
    return kwargs


def key_prefixes(keys: Iterable[str], depth: int = 2) -> List[str]:
    """Distinct key prefixes up to ``depth`` dotted parts with counts, e.g. ``['backbone.layers (96)']``.

    Used in error messages to show what a checkpoint holds.
    """
    counts: Dict[str, int] = {}
    for k in keys:
        parts = k.split('.')
        p = '.'.join(parts[:depth]) if len(parts) > depth else '.'.join(parts[:-1]) or k
        counts[p] = counts.get(p, 0) + 1
    return [f'{p} ({n})' for p, n in sorted(counts.items())]


# The prefixes :func:`default_backbone_prefix` tries, in order (see its docstring).
BACKBONE_PREFIXES = ('teacher.backbone.', 'backbone.')


def default_backbone_prefix(state_dict: Mapping[str, Any]) -> str:
    """The backbone to publish from a training ``state_dict``: the EMA teacher's when there is one.

    cotap_mm algorithms keep the student as ``backbone.*`` and the EMA teacher as
    ``teacher.backbone.*``. DINO, iBOT and DINOv2 release their teacher weights (the EMA teacher is
    the better, smoother model; their evaluations use it). CoTAP's paper does not say which branch
    it evaluates; we follow its DINO/iBOT initialisations (a config-free choice: the publish tool
    takes ``--keep-prefix backbone.`` for the student). So the default is
    ``'teacher.backbone.'`` when such keys exist, else ``'backbone.'`` (single-network models,
    mmseg/mmdet/mmpretrain checkpoints).

    Raises:
        ValueError: neither prefix occurs; the message lists the prefixes seen.
    """
    for p in BACKBONE_PREFIXES:
        if any(k.startswith(p) for k in state_dict):
            return p
    raise ValueError(f'no backbone keys found (looked for prefixes {list(BACKBONE_PREFIXES)}); '
                     f'prefixes in the state_dict: {key_prefixes(state_dict)[:30]}. Pass the right '
                     'one with --keep-prefix.')


def extract_prefixed(state_dict: Mapping[str, torch.Tensor],
                     keep_prefix: str,
                     out_prefix: str = 'backbone.') -> 'OrderedDict[str, torch.Tensor]':
    """Keep the tensors whose key starts with ``keep_prefix``, renamed to ``out_prefix`` + rest.

    Example: ``extract_prefixed(sd, 'teacher.backbone.')`` turns ``teacher.backbone.layers.0.ln1.weight``
    into ``backbone.layers.0.ln1.weight`` and drops everything else (heads, necks, the student, buffers).

    Raises:
        ValueError: ``keep_prefix`` is empty or matches no tensor; the message lists the prefixes seen.
    """
    if not keep_prefix:
        raise ValueError('keep_prefix must be a non-empty key prefix such as "backbone."')
    out = OrderedDict((out_prefix + k[len(keep_prefix):], v) for k, v in state_dict.items()
                      if k.startswith(keep_prefix) and isinstance(v, torch.Tensor))
    if not out:
        raise ValueError(f'no tensors with prefix {keep_prefix!r} in the state_dict; prefixes seen: '
                         f'{key_prefixes(state_dict)[:30]}')
    return out

"""Pure functions converting the released CoTAP checkpoints to cotap_mm's CoTAP keys.

Released code: github.com/KID-7391/CoTAP (original release; public copy ``Mayao15/CoTAP`` at commit
``7aa0ca6``). Its checkpoints (the ``.ckpt`` files its README links) are PyTorch-Lightning checkpoints
written by ``train.py``: the ``LightningModule`` holds the student as ``net`` and the EMA teacher as
``net_teacher`` (both ``models/model_wrapper.py`` ``DinoFeaturizer`` s, which keep the ViT as
``.model``), so ``ckpt['state_dict']`` has

* ``net.model.<ViT key>`` (student) and ``net_teacher.model.<ViT key>`` (EMA teacher), and possibly
  ``loss_fn.*`` / ``tester.*`` (the module's loss and evaluation submodules: training-only state,
  dropped and listed);

the ViT keys (``models/vit/vision_transformer_depth.py``) are DINO's trunk keys (``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, no
final ``norm``) plus

* ``blocks.N.{norm_in, norm_out_patch, norm_out_cls}``: the object-aware filter's LayerNorms. Every
  ``Block`` builds them, only the last block runs the filter (``selective_layer_start`` = 11 of 12),
  so the last block's become ``neck.*`` and the others are dropped (listed);
* ``kernel`` [M, C, K, K]: the filter prototypes (``neck.prototypes``, marked initialised);
* ``projection_heads.{0, 1}.projection_head.{0, 2, 4}`` (Linear, GELU, Linear, GELU, Linear without
  bias) and ``projection_heads.{0, 1}.last_layer.weight_{g, v}`` (weight-normalised, ``g`` fixed to
  1): the patch head (``head_idx_patch: 0``) and the CLS head (``head_idx_cls: 1``) of the release's
  model configs -> :class:`~cotap_mm.models.heads.DINOProjectionHead` ``mlp.{0, 2, 4}`` (the last
  without bias: ``last_mlp_bias=False``) and ``weight_v``; ``weight_g`` is folded into
  ``norm_last_layer=True`` (refused if it deviates from 1 by more than :data:`WEIGHT_G_ATOL`).

The ViT trunk keys go through :func:`~cotap_mm.models.backbones.vit_key_mapping.map_dino_key` (the one
DINO -> mmpretrain mapping; DINOv2-named LayerScale ``blocks.N.ls1.gamma`` / ``ls2.gamma`` included).
A ``DinoFeaturizer`` state dict (``model.*``) and a bare ViT state dict are accepted too. The release's
``utils.load_checkpoint`` also strips ``teacher.`` / ``model_tea.`` / ``backbone.`` prefixes, for the
DINO / iBOT / Leopart / Mugs *initialisation* checkpoints it reads; those have no filter and are
refused here (``tools/model_converters/vit2cotap.py --src-format dino|ibot`` converts them).
"""
import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from .vit_key_mapping import infer_vit_arch, key_prefixes, map_dino_key, vit_kwargs_from_arch

__all__ = [
    'RELEASE_BRANCH_PREFIXES', 'RELEASE_TRAINING_ONLY_PREFIXES', 'RELEASE_HEADS', 'WEIGHT_G_ATOL',
    'looks_like_cotap_release', 'split_release_checkpoint', 'select_release_branch',
    'convert_release_branch', 'release_model_kwargs'
]

# Lightning state-dict prefix of each branch (release train.py: ``self.net`` / ``self.net_teacher``)
RELEASE_BRANCH_PREFIXES = {'student': 'net.model.', 'teacher': 'net_teacher.model.'}
# other submodules of the release's LightningModule: losses and evaluation probes, not the model
RELEASE_TRAINING_ONLY_PREFIXES = ('loss_fn.', 'tester.')
# ``projection_heads.<i>`` -> our head (release configs: head_idx_patch 0, head_idx_cls 1)
RELEASE_HEADS = {0: 'patch_head', 1: 'cls_head'}

# |weight_g - 1| tolerated when folding the released fixed norm into ``norm_last_layer=True``. The
# release fills it with 1 and never trains it (requires_grad=False); its teacher's EMA of the
# constant 1 stays exactly 1 in float32 (m * 1 + (1 - m) * 1 rounds to 1), so released files hold
# ones; the tolerance only absorbs copies re-saved in lower precision.
WEIGHT_G_ATOL = 1e-4

_FILTER_NORMS = ('norm_in', 'norm_out_patch', 'norm_out_cls')
_BLOCK = re.compile(r'^blocks\.(\d+)\.')
_BLOCK_FILTER = re.compile(r'^blocks\.(\d+)\.(norm_in|norm_out_patch|norm_out_cls)\.(weight|bias)$')
_HEAD = re.compile(r'^projection_heads\.(\d+)\.(.+)$')
_HEAD_MLP = re.compile(r'^projection_head\.(\d+)\.(weight|bias)$')


def looks_like_cotap_release(keys: Any) -> bool:
    """True when state-dict ``keys`` hold the released filter (``kernel`` and ``norm_out_patch``)."""
    keys = list(keys)
    return (any(k == 'kernel' or k.endswith('model.kernel') for k in keys)
            and any('.norm_out_patch.' in k for k in keys))


def split_release_checkpoint(ckpt: Mapping[str, Any], strict: bool = True, source: str = 'checkpoint'
                             ) -> Tuple[str, Dict[Optional[str], 'OrderedDict[str, torch.Tensor]'],
                                        List[str]]:
    """Find the ViT state dict(s) of a released CoTAP checkpoint.

    Args:
        ckpt (Mapping): what ``torch.load`` returned: a Lightning checkpoint (tensors under
            ``'state_dict'``) or a bare state dict.
        strict (bool): refuse Lightning keys outside the two branches and the training-only
            submodules; if False they are dropped (listed). Defaults to True.
        source (str): the file name, for error messages. Defaults to 'checkpoint'.

    Returns:
        tuple: ``layout`` ('lightning', 'featurizer' = ``model.*``, 'vit' = bare ViT keys),
        ``branches`` (``{'student': sd, 'teacher': sd}`` with the branches present for
        'lightning', ``{None: sd}`` otherwise; prefixes removed) and the dropped keys (sorted).

    Raises:
        TypeError: ``ckpt`` is not a mapping.
        ValueError: no released key layout, or (``strict``) unknown keys; the message names them.
    """
    if not isinstance(ckpt, Mapping):
        raise TypeError(f'{source}: expected a checkpoint dict, got {type(ckpt).__name__}')
    d = ckpt['state_dict'] if isinstance(ckpt.get('state_dict'), Mapping) else ckpt
    tensors = OrderedDict((k, v) for k, v in d.items() if isinstance(v, torch.Tensor))
    if not tensors or len(tensors) != len(d):
        raise ValueError(f"{source}: expected a Lightning checkpoint (tensors under 'state_dict') or "
                         'a bare state dict of tensors; top-level keys: '
                         f'{sorted(map(str, ckpt.keys()))[:20]}')
    prefixes = tuple(RELEASE_BRANCH_PREFIXES.values())
    if any(k.startswith(prefixes) for k in tensors):
        branches: Dict[Optional[str], 'OrderedDict[str, torch.Tensor]'] = {}
        for name, prefix in RELEASE_BRANCH_PREFIXES.items():
            sub = OrderedDict((k[len(prefix):], v) for k, v in tensors.items() if k.startswith(prefix))
            if sub:
                branches[name] = sub
        rest = [k for k in tensors if not k.startswith(prefixes)]
        unknown = [k for k in rest if not k.startswith(RELEASE_TRAINING_ONLY_PREFIXES)]
        if unknown and strict:
            raise ValueError(
                f'{source}: {len(unknown)} keys are neither net.model.* (student) nor '
                f'net_teacher.model.* (EMA teacher) nor training-only '
                f'{"/".join(p + "*" for p in RELEASE_TRAINING_ONLY_PREFIXES)}: {unknown[:10]}; '
                'pass strict=False (--non-strict) to drop them')
        return 'lightning', branches, sorted(rest)
    if all(k.startswith('model.') for k in tensors):
        return 'featurizer', {None: OrderedDict((k[len('model.'):], v)
                                                for k, v in tensors.items())}, []
    if any(k.startswith('blocks.') for k in tensors):
        return 'vit', {None: tensors}, []
    raise ValueError(
        f'{source}: no released CoTAP key layout: expected net.model.* / net_teacher.model.* (a '
        "Lightning .ckpt of the release's train.py), model.* (a DinoFeaturizer state dict) or the "
        'ViT keys blocks.*, kernel, projection_heads.*; key prefixes present: '
        f'{key_prefixes(tensors)[:20]}')


def select_release_branch(branches: Mapping[Optional[str], Mapping[str, torch.Tensor]], branch: str,
                          source: str = 'checkpoint') -> Mapping[str, torch.Tensor]:
    """The state dict of ``branch`` ('student' / 'teacher') from :func:`split_release_checkpoint`;
    a single-network layout (key None) serves either.

    Raises:
        ValueError: ``branch`` is unknown or absent (the message names the prefix looked for).
    """
    if branch not in RELEASE_BRANCH_PREFIXES:
        raise ValueError(f"branch must be 'student' or 'teacher', got {branch!r}")
    if None in branches:
        return branches[None]
    if branch not in branches:
        present = [RELEASE_BRANCH_PREFIXES[b] + '*' for b in branches]
        raise ValueError(f'{source}: no {RELEASE_BRANCH_PREFIXES[branch]}* tensors (the {branch}); '
                         f'present: {present}')
    return branches[branch]


def _head_kwargs(head: Mapping[str, torch.Tensor], idx: int, in_channels: int) -> Dict[str, Any]:
    """Validate one converted head and read its :class:`DINOProjectionHead` kwargs."""
    name = f'projection_heads.{idx}'
    layers = sorted(int(k.split('.')[1]) for k in head if k.startswith('mlp.') and k.endswith('.weight'))
    if not layers or layers != list(range(0, 2 * len(layers), 2)) or 'weight_v' not in head:
        raise ValueError(f'{name}: expected projection_head.{{0, 2, 4}}.weight (Linear / GELU layers) '
                         f'and last_layer.weight_v; got {sorted(head)}')
    weights = [head[f'mlp.{j}.weight'] for j in layers]
    if weights[0].dim() != 2 or weights[0].shape[1] != in_channels:
        raise ValueError(f'{name}.projection_head.0.weight has shape {tuple(weights[0].shape)}; '
                         f'expected [hidden, 2C = {in_channels}] (the heads read the 2C filter tokens)')
    for j, (w, nxt) in enumerate(zip(weights[:-1], weights[1:])):
        if nxt.dim() != 2 or nxt.shape[1] != w.shape[0]:
            raise ValueError(f'{name}.projection_head.{layers[j + 1]}.weight has shape '
                             f'{tuple(nxt.shape)}; expected [*, {w.shape[0]}]')
    for j in layers[:-1]:
        if f'mlp.{j}.bias' not in head:
            raise ValueError(f'{name}.projection_head.{j}.bias is missing (only the last MLP layer '
                             'may have no bias)')
    bottleneck = int(weights[-1].shape[0])
    v = head['weight_v']
    if v.dim() != 2 or v.shape[1] != bottleneck:
        raise ValueError(f'{name}.last_layer.weight_v has shape {tuple(v.shape)}; expected '
                         f'[num_prototypes, {bottleneck}]')
    g = head.get('weight_g')
    if g is None:
        raise ValueError(f'{name}.last_layer.weight_g is missing (the released last layer is '
                         'weight-normalised: weight_g and weight_v)')
    if tuple(g.shape) != (v.shape[0], 1):
        raise ValueError(f'{name}.last_layer.weight_g has shape {tuple(g.shape)}; expected '
                         f'[{v.shape[0]}, 1]')
    dev = float((g.detach().float() - 1).abs().max())
    if dev > WEIGHT_G_ATOL:
        raise ValueError(f'{name}.last_layer.weight_g deviates from 1 by up to {dev:.3g}; the '
                         'release fixes it at 1 (requires_grad=False), so it is represented by '
                         f'DINOProjectionHead(norm_last_layer=True) only within {WEIGHT_G_ATOL}')
    kwargs: Dict[str, Any] = dict(in_channels=in_channels, bottleneck_channels=bottleneck,
                                  num_prototypes=int(v.shape[0]), num_layers=len(layers),
                                  norm_last_layer=True,
                                  last_mlp_bias=f'mlp.{layers[-1]}.bias' in head,
                                  weight_g_max_abs_dev=dev)
    if len(layers) > 1:
        kwargs['hidden_channels'] = int(weights[0].shape[0])
    return kwargs


def convert_release_branch(state_dict: Mapping[str, torch.Tensor], with_heads: bool = True,
                           strict: bool = True, source: str = 'checkpoint'
                           ) -> Tuple[Dict[str, 'OrderedDict[str, torch.Tensor]'], Dict[str, Any],
                                      List[str]]:
    """One released ViT (keys as in the module docstring, prefixes removed) -> our modules' keys.

    Args:
        state_dict (Mapping): the branch's ViT state dict.
        with_heads (bool): convert (and require) both projection heads; if False their keys are
            dropped (listed). Defaults to True.
        strict (bool): raise on unknown keys; if False they are dropped. Defaults to True.
        source (str): name for error messages. Defaults to 'checkpoint'.

    Returns:
        tuple: ``parts`` (``{'backbone': CoTAPViT keys, 'neck': ObjectPrototypeNeck keys with
        prototypes_initialized=True}`` plus ``'patch_head'`` / ``'cls_head'``
        (DINOProjectionHead keys) with heads; same tensor objects), ``info`` (``arch`` of
        :func:`infer_vit_arch`, ``num_prototypes``, ``kernel_size``, per head its kwargs and
        ``weight_g_max_abs_dev``) and the dropped source keys (sorted; the folded ``weight_g`` are
        not listed).

    Raises:
        ValueError: the filter, a head or the trunk is missing, a shape does not fit, or
            (``strict``) unknown keys; messages name the keys and what was expected.
    """
    blocks = {int(m.group(1)) for k in state_dict for m in [_BLOCK.match(k)] if m}
    if not blocks:
        raise ValueError(f'{source}: no blocks.* keys: not a ViT state dict (key prefixes: '
                         f'{key_prefixes(state_dict)[:20]})')
    last = max(blocks)
    backbone: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    neck: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    heads: Dict[int, 'OrderedDict[str, torch.Tensor]'] = {i: OrderedDict() for i in RELEASE_HEADS}
    dropped, unknown = [], []
    for k, v in state_dict.items():
        m = _BLOCK_FILTER.match(k)
        if m:
            if int(m.group(1)) == last:
                neck[f'{m.group(2)}.{m.group(3)}'] = v
            else:  # built in every released Block, used in the last one only
                dropped.append(k)
            continue
        if k == 'kernel':
            neck['prototypes'] = v
            continue
        m = _HEAD.match(k)
        if m:
            idx, rest = int(m.group(1)), m.group(2)
            mlp = _HEAD_MLP.match(rest)
            if not with_heads:
                dropped.append(k)
            elif idx not in RELEASE_HEADS:
                unknown.append(k)
            elif mlp:
                heads[idx][f'mlp.{mlp.group(1)}.{mlp.group(2)}'] = v
            elif rest in ('last_layer.weight_v', 'last_layer.weight_g'):
                heads[idx][rest[len('last_layer.'):]] = v
            else:
                unknown.append(k)
            continue
        try:
            new = map_dino_key(k)
        except KeyError:
            unknown.append(k)
            continue
        if new is None:
            dropped.append(k)
        else:
            backbone[new] = v
    if unknown and strict:
        raise ValueError(f'{source}: {len(unknown)} keys are not released CoTAP ViT keys: '
                         f'{unknown[:10]}; pass strict=False (--non-strict) to drop them')
    dropped += unknown
    for key in ('patch_embed.projection.weight', 'pos_embed', 'cls_token'):
        if key not in backbone:
            raise ValueError(f'{source}: the ViT trunk lacks {key} (release: '
                             f'{"patch_embed.proj.weight" if key.startswith("patch") else key})')
    C = int(backbone['patch_embed.projection.weight'].shape[0])
    missing = [f'blocks.{last}.{n}.{p}' for n in _FILTER_NORMS for p in ('weight', 'bias')
               if f'{n}.{p}' not in neck] + ([] if 'prototypes' in neck else ['kernel'])
    if missing:
        raise ValueError(
            f'{source}: the object-aware filter keys {missing} are missing: not a released CoTAP '
            f'checkpoint (expected kernel [M, C, K, K] and blocks.{last}.norm_in / norm_out_patch / '
            'norm_out_cls in the last block). A DINO / iBOT / timm ViT converts with '
            '--src-format auto|dino|ibot (backbone only).')
    kernel = neck['prototypes']
    if kernel.dim() != 4 or kernel.shape[1] != C or kernel.shape[2] != kernel.shape[3] \
            or kernel.shape[2] % 2 == 0:
        raise ValueError(f'{source}: kernel has shape {tuple(kernel.shape)}; expected the filter '
                         f'prototypes [M, C = {C}, K, K] with an odd K (released: [64, C, 3, 3])')
    for n in _FILTER_NORMS:
        width = C if n == 'norm_in' else 2 * C
        for p in ('weight', 'bias'):
            if tuple(neck[f'{n}.{p}'].shape) != (width, ):
                raise ValueError(f'{source}: blocks.{last}.{n}.{p} has shape '
                                 f'{tuple(neck[f"{n}.{p}"].shape)}; expected [{width}]')
    neck['prototypes_initialized'] = torch.tensor(True)
    parts = {'backbone': backbone, 'neck': neck}
    info: Dict[str, Any] = dict(arch=infer_vit_arch(backbone), num_prototypes=int(kernel.shape[0]),
                                kernel_size=int(kernel.shape[2]))
    if with_heads:
        for idx, name in RELEASE_HEADS.items():
            if not heads[idx]:
                raise ValueError(
                    f'{source}: projection_heads.{idx}.* (the {name}) is missing; the release\'s '
                    'train.py saves both heads (an eval-only model deletes them). To import the ViT '
                    'and the filter only, use the filtered target (--target filtered).')
            info[name] = _head_kwargs(heads[idx], idx, 2 * C)
            del heads[idx]['weight_g']  # fixed at 1: DINOProjectionHead(norm_last_layer=True)
            parts[name] = heads[idx]
    return parts, info, sorted(dropped)


def release_model_kwargs(info: Mapping[str, Any], num_heads: Optional[int] = None,
                         final_norm: bool = False) -> Dict[str, Any]:
    """Constructor arguments rebuilding the converted modules (for ``meta`` and the printout).

    Args:
        info (Mapping): ``info`` of :func:`convert_release_branch`.
        num_heads (int, optional): attention heads (not in the weights); default head dim 64
            (ViT-S: 6, ViT-B: 12, as the release).
        final_norm (bool): the checkpoint carries a final ``ln1``. Defaults to False (release).

    Returns:
        dict: ``backbone`` (:class:`CoTAPViT`), ``neck`` (:class:`ObjectPrototypeNeck`),
        ``patch_head`` / ``cls_head`` (:class:`DINOProjectionHead`, when converted; ``in_channels``
        is set by CoTAP) and ``filtered_vit`` (:class:`CoTAPFilteredViT`).
    """
    vit = vit_kwargs_from_arch(info['arch'], num_heads=num_heads)
    vit['final_norm'] = bool(final_norm)
    neck = dict(num_prototypes=info['num_prototypes'], kernel_size=info['kernel_size'])
    out: Dict[str, Any] = dict(backbone=dict(type='CoTAPViT', **vit),
                               neck=dict(type='ObjectPrototypeNeck', **neck))
    for name in RELEASE_HEADS.values():
        if name in info:
            head = {k: v for k, v in info[name].items()
                    if k not in ('in_channels', 'weight_g_max_abs_dev')}
            out[name] = dict(type='DINOProjectionHead', **head)
    backbone_cfg = {k: v for k, v in vit.items() if k not in ('arch', 'img_size', 'patch_size')}
    out['filtered_vit'] = dict(type='CoTAPFilteredViT', arch=vit['arch'], img_size=vit['img_size'],
                               patch_size=vit['patch_size'], **neck, backbone_cfg=backbone_cfg)
    return out

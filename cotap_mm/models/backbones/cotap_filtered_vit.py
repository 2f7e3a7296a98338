"""CoTAP ViT + object-aware filter as one (frozen) downstream backbone: the paper's 2C-dim patch features.

CoTAP: "Semantic Concentration for Self-Supervised Dense Representations Learning",
https://arxiv.org/abs/2509.09429 (official code: github.com/KID-7391/CoTAP, ``train_segmentation.py``).
"""
import logging
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from mmengine.logging import print_log
from mmengine.model.weight_init import PretrainedInit
from mmengine.runner.checkpoint import _load_checkpoint
from mmpretrain.models.backbones.base_backbone import BaseBackbone
from mmpretrain.registry import MODELS

from cotap_mm.utils.state_dict import find_state_dict
from ..necks.object_prototype_neck import ObjectPrototypeNeck, filtered_forward, tokens_to_map
from .cotap_vit import CoTAPViT

__all__ = ['CoTAPFilteredViT', 'CoTAPFilteredCLSViT', 'split_filtered_state_dict']

_PARTS = ('backbone', 'neck')


def split_filtered_state_dict(state_dict: Mapping[str, Any], prefix: str = '',
                              source: str = 'checkpoint') -> Dict[str, 'OrderedDict[str, torch.Tensor]']:
    """Pick the ViT and filter tensors of one CoTAP branch out of a checkpoint's state dict.

    A CoTAP training checkpoint holds the student as ``backbone.*`` / ``neck.*`` and the EMA teacher
    as ``teacher.backbone.*`` / ``teacher.neck.*``; ``tools/model_converters/publish_model.py
    --with-neck`` writes ``backbone.*`` / ``neck.*``.

    Args:
        state_dict (Mapping): the checkpoint's state dict.
        prefix (str): branch prefix: ``''`` = student (or a published checkpoint), ``'teacher.'`` =
            EMA teacher. Defaults to ''.
        source (str): name of the checkpoint, for error messages. Defaults to 'checkpoint'.

    Returns:
        dict: ``{'backbone': {vit key: tensor}, 'neck': {filter key: tensor}}`` (prefixes removed).

    Raises:
        KeyError: no ``<prefix>backbone.*`` or no ``<prefix>neck.*`` tensors; the message lists the
            prefixes present and what to do.
    """
    parts = {}
    for part in _PARTS:
        head = f'{prefix}{part}.'
        parts[part] = OrderedDict((k[len(head):], v) for k, v in state_dict.items()
                                  if k.startswith(head) and isinstance(v, torch.Tensor))
    if parts['backbone'] and parts['neck']:
        return parts
    seen = sorted({'.'.join(k.split('.')[:2 if k.startswith('teacher.') else 1]) + '.'
                   for k in state_dict})[:20]
    if not parts['backbone']:
        hint = ''
        if prefix.endswith('backbone.'):
            hint = (f" prefix={prefix!r} looks like the plain-ViT probes' one: this backbone takes the "
                    "branch prefix ('' = student, 'teacher.' = EMA teacher).")
        raise KeyError(f'{source}: no {prefix}backbone.* tensors for CoTAPFilteredViT (prefix='
                       f'{prefix!r}); key prefixes present: {seen}.{hint}')
    raise KeyError(
        f'{source}: no {prefix}neck.* tensors (the object-aware filter: prototypes and its three '
        f'LayerNorms) for CoTAPFilteredViT (prefix={prefix!r}); key prefixes present: {seen}. Use a '
        'CoTAP training checkpoint (it holds backbone.*/neck.* and teacher.backbone.*/teacher.neck.*) '
        'or one published with `tools/model_converters/publish_model.py --with-neck`; a backbone-only '
        'checkpoint can only be probed with the plain-ViT configs (type=mmpretrain.CoTAPViT).')


@MODELS.register_module()
class CoTAPFilteredViT(BaseBackbone):
    """CoTAP's evaluation features: last-block tokens ‖ object-aware-filtered tokens, LayerNorm(2C).

    Paper: `Semantic Concentration for Self-Supervised Dense Representations Learning
    <https://arxiv.org/abs/2509.09429>`_. CoTAP's linear segmentation protocol probes the 2C-dim
    patch tokens of the object-aware filter, not the plain ViT output. mmseg's backbone -> neck ->
    head chain cannot express that (the filter needs the tokens *entering* the
    last block and the block itself), so this backbone wraps both parts:

    ``images [B, 3, H, W] -> backbone.forward_pre_last -> neck(tokens, hw, backbone.last_block)
    -> patches [B, h*w, 2C] -> (features [B, 2C, h, w],)``

    exactly :meth:`cotap_mm.models.algorithms.CoTAP.extract_feat` (the ViT's final norm ``ln1`` is
    not used: the filter has its own ``norm_out_patch``).

    **Weights.** The submodules are named like in :class:`~cotap_mm.models.algorithms.CoTAP`
    (``backbone`` = :class:`CoTAPViT`, ``neck`` = :class:`ObjectPrototypeNeck`), so a branch of a
    CoTAP checkpoint maps by name. ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)``
    loads ``<prefix>backbone.*`` into the ViT and ``<prefix>neck.*`` into the filter, both strictly
    (missing / unexpected keys or shape mismatches are errors; the pos-embed is resized to
    ``img_size`` by mmpretrain's load hook): ``prefix=''`` (or None) = the student (or a
    checkpoint published with ``publish_model.py --with-neck``), ``prefix='teacher.'`` = the EMA
    teacher. The checkpoint must hold the filter and its prototypes must have been set by CoTAP's
    k-means (``neck.prototypes_initialized``), otherwise :meth:`init_weights` raises; :meth:`forward`
    also refuses to run with uninitialised prototypes (e.g. no ``init_cfg``).

    **Frozen** (default): every parameter has ``requires_grad=False`` and the module stays in eval
    mode whatever ``train()`` is called with (dropout / drop-path are 0 in CoTAP ViTs anyway).

    Args:
        arch (str | dict): :class:`CoTAPViT` arch ('dino-s', 'dino-b', or a dict). Defaults to 'dino-s'.
        img_size (int | tuple): pos-embed grid of the ViT (the checkpoint's is resized to it).
            Defaults to 224.
        patch_size (int): Defaults to 16.
        num_prototypes (int): M of the filter (CoTAP: 64). Defaults to 64.
        kernel_size (int): K, spatial size of a prototype (CoTAP: 3). Defaults to 3.
        backbone_cfg (dict, optional): further :class:`CoTAPViT` kwargs (e.g.
            ``layer_scale_init_value`` for DINOv2 layouts). Defaults to None.
        neck_cfg (dict, optional): further :class:`ObjectPrototypeNeck` kwargs (``scale``,
            ``norm_eps``). Defaults to None.
        frozen (bool): freeze everything (the linear-probe protocol). Defaults to True.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=PATH, prefix='' | 'teacher.')``
            (``map_location`` optional). Defaults to None.
    """

    def __init__(self,
                 arch: Union[str, Dict[str, int]] = 'dino-s',
                 img_size: Union[int, Tuple[int, int]] = 224,
                 patch_size: int = 16,
                 num_prototypes: int = 64,
                 kernel_size: int = 3,
                 backbone_cfg: Optional[dict] = None,
                 neck_cfg: Optional[dict] = None,
                 frozen: bool = True,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        backbone_cfg = dict(backbone_cfg or {})
        for key in ('arch', 'img_size', 'patch_size'):
            if key in backbone_cfg:
                raise ValueError(f'pass {key} as an argument of CoTAPFilteredViT, not in backbone_cfg')
        self.backbone = CoTAPViT(arch=arch, img_size=img_size, patch_size=patch_size, **backbone_cfg)
        neck_cfg = dict(neck_cfg or {})
        for key in ('embed_dims', 'num_prototypes', 'kernel_size'):
            if key in neck_cfg:
                raise ValueError(f'pass {key} through CoTAPFilteredViT arguments, not in neck_cfg '
                                 '(embed_dims is the backbone width)')
        self.neck = ObjectPrototypeNeck(embed_dims=self.backbone.embed_dims,
                                        num_prototypes=num_prototypes, kernel_size=kernel_size,
                                        **neck_cfg)
        self.frozen = bool(frozen)
        if self.frozen:
            self.requires_grad_(False)
            self.train(False)

    @property
    def out_channels(self) -> int:
        """Width of the features (2C)."""
        return self.neck.out_channels

    # ------------------------------------------------------------------ weights
    def init_weights(self) -> None:
        """Default-initialise, then load a ``Pretrained`` ``init_cfg`` (see the class docstring)."""
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else (
            [self.init_cfg] if self.init_cfg else [])
        pretrained = [c for c in cfgs if c.get('type') in ('Pretrained', PretrainedInit)]
        if not pretrained:
            super().init_weights()
            return
        if len(pretrained) > 1:
            raise ValueError(f'CoTAPFilteredViT takes one Pretrained init_cfg, got {pretrained}')
        cfg = dict(pretrained[0])
        unknown = set(cfg) - {'type', 'checkpoint', 'prefix', 'map_location'}
        if unknown:
            raise ValueError(f'unknown keys {sorted(unknown)} in the Pretrained init_cfg of '
                             'CoTAPFilteredViT (accepted: checkpoint, prefix, map_location)')
        if not cfg.get('checkpoint'):
            raise ValueError('the Pretrained init_cfg of CoTAPFilteredViT needs `checkpoint`')
        already = self.is_init
        saved = self.init_cfg
        self.init_cfg = [c for c in cfgs if c not in pretrained] or None
        try:
            super().init_weights()  # children's default init (+ any non-Pretrained init_cfg)
        finally:
            self.init_cfg = saved
        if already:
            return  # mmengine has logged that init_weights was called twice
        self.load_cotap_checkpoint(cfg['checkpoint'], prefix=cfg.get('prefix') or '',
                                   map_location=cfg.get('map_location', 'cpu'))

    def load_cotap_checkpoint(self, checkpoint: str, prefix: str = '',
                              map_location: Any = 'cpu') -> None:
        """Load one CoTAP branch (ViT + filter) from a checkpoint file.

        Args:
            checkpoint (str): path / URL (read through mmengine's ``CheckpointLoader``, i.e.
                ``weights_only=True`` for local files once ``cotap_mm`` is imported).
            prefix (str): '' = student / published checkpoint, 'teacher.' = EMA teacher.
            map_location: Defaults to 'cpu'.

        Raises:
            KeyError: the checkpoint lacks ``<prefix>backbone.*`` or ``<prefix>neck.*``.
            RuntimeError: keys / shapes do not match the configured model, or the checkpoint's
                prototypes were never initialised.
        """
        print_log(f'CoTAPFilteredViT: load {prefix or "(student) "}backbone.* + {prefix}neck.* from '
                  f'{checkpoint}', logger='current')
        ckpt = _load_checkpoint(checkpoint, map_location=map_location, logger='current')
        state_dict = find_state_dict(ckpt, str(checkpoint), strip_module=False)
        parts = split_filtered_state_dict(state_dict, prefix, source=str(checkpoint))
        if prefix.startswith('teacher') and 'teacher_initialized' in state_dict \
                and not bool(state_dict['teacher_initialized']):
            print_log(f'CoTAPFilteredViT: teacher_initialized is False in {checkpoint}: the teacher '
                      'was never initialised by EMATeacherHook', logger='current',
                      level=logging.WARNING)
        for part in _PARTS:
            module = getattr(self, part)
            try:
                module.load_state_dict(parts[part], strict=True)
            except RuntimeError as e:
                raise RuntimeError(f'{checkpoint}: {prefix}{part}.* does not fit the configured '
                                   f'{type(module).__name__} (check arch / patch_size / '
                                   f'num_prototypes / kernel_size): {e}') from e
        self._check_prototypes(f'checkpoint {checkpoint} ({prefix}neck.prototypes_initialized is '
                               'False)')

    def _check_prototypes(self, where: str) -> None:
        if not self.neck.initialized:
            raise RuntimeError(
                f'CoTAPFilteredViT: the object-aware filter prototypes are not initialised: {where}. '
                'CoTAP sets them by k-means once its prototype bank is full: the bank takes every '
                'pooled sample of a step until then, so it fills after ceil(bank_size / (global '
                'crops x bank-source images per process and step)) iterations, e.g. 10 for the '
                'released ViT-S/16 run (2 x 56 ImageNet images a step), 128 with 4 bank images a '
                'step; evaluate a later CoTAP checkpoint, load '
                "one through init_cfg=dict(type='Pretrained', checkpoint=..., prefix='' or "
                "'teacher.'), or probe the plain ViT with the configs using mmpretrain.CoTAPViT.")

    # ------------------------------------------------------------------ forward
    def train(self, mode: bool = True) -> 'CoTAPFilteredViT':
        """Set the mode; a frozen module always stays in eval mode."""
        super().train(False if self.frozen else mode)
        return self

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        """Images [B, 3, H, W] -> ``(features [B, 2C, H/p, W/p],)`` (mmseg's tuple of levels)."""
        self._check_prototypes('this model was not loaded from a CoTAP checkpoint')
        out = filtered_forward(self.backbone, self.neck, x)
        return (tokens_to_map(out.patches, out.hw), )


@MODELS.register_module()
class CoTAPFilteredCLSViT(CoTAPFilteredViT):
    """Frozen ViT + object-aware filter whose output is the 2C-dim CLS token (what mmpretrain's
    classification heads take; CoTAP's ImageNet k-NN and linear classification read it).

    Same arguments, weights and checks as :class:`CoTAPFilteredViT`.
    """

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        """Images [B, 3, H, W] -> ``(cls [B, 2C],)``."""
        self._check_prototypes('this model was not loaded from a CoTAP checkpoint')
        return (filtered_forward(self.backbone, self.neck, x).cls, )


"""iBOT with de-coupling (and optional de-positioning): the ViT baseline of the de-coupling papers.

Papers: `De-coupling and De-positioning Dense Self-supervised Learning
<https://arxiv.org/abs/2303.16947>`_; its ICLR-2024 successor `Mind Your Augmentation: The Key to
Decoupling Dense Self-Supervised Learning <https://openreview.net/forum?id=WQYHbr36Fo>`_ (official
code github.com/ztt1024/denseSSL, built on iBOT); iBOT: `Image BERT Pre-Training with Online
Tokenizer <https://arxiv.org/abs/2111.07832>`_.
"""
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from ..losses.dino_cls_loss import collapse_log_vars
from ..utils.decoupling import DecouplingBranch, masks_from_data_samples
from ..utils.depositioning import DepositioningBranch
from ..utils.extra_rows import stack_extra_rows
from ..utils.module_builder import build_module
from ..utils.region_pooling import box_pool_tokens
from .base import TeacherStudentSelfSupervisor, first_view

__all__ = ['DDSSLiBOT']


@MODELS.register_module()
class DDSSLiBOT(TeacherStudentSelfSupervisor):
    """iBOT (masked patch self-distillation + [CLS] DINO loss) with the de-coupling branch.

    Paper: `Mind Your Augmentation <https://openreview.net/forum?id=WQYHbr36Fo>`_ (successor of
    `arXiv 2303.16947 <https://arxiv.org/abs/2303.16947>`_), iBOT ViT-S/16 on COCO: 42.3 -> 45.1
    AP^bb with the de-coupling branch.

    **Modules.** Student: ``backbone`` (:class:`CoTAPViT`, iBOT/DINO layout), ``cls_head`` and,
    unless the head is shared (``patch_head=None``, iBOT's ``shared_head=True``, the recipe),
    ``patch_head`` (:class:`DINOProjectionHead`), plus ``mask_token`` [1, C] (iBOT's
    ``masked_embed``, zero-initialised, student only). ``teacher``: ``nn.ModuleDict`` deep copy of
    the student modules (``requires_grad=False``, always in eval mode, so no drop-path, like
    iBOT's teacher), EMA-updated by :class:`EMATeacherHook`; :attr:`student` is an unregistered
    ``ModuleDict`` view; bool buffer ``teacher_initialized`` for the hook.

    **Inputs.** ``inputs``: a list of view batches [B, 3, H, W], the ``num_global_crops`` global
    views first (mmpretrain ``MultiView`` + ``PackInputs``; with :class:`PackGeometricViews` only
    the student views are used and ``num_global_crops`` comes from the metainfo). As in iBOT the
    teacher sees the same global views, unmasked. ``data_samples[i].<mask_key>``: [>= G, h, w]
    bool RCC masks (:class:`RegionCollaborativeCutout`), the MIM masks of the global views.

    **Losses.**

    * ``loss_cls``: ``cls_loss`` (:class:`DINOClsLoss`) of the student [CLS] outputs of all views
      (global views masked) against the teacher's of the global views, pairs of different views.
      Its collapse diagnostics are logged (not summed) as ``cls_teacher_entropy``,
      ``cls_teacher_marginal_entropy`` and ``cls_kl`` (:func:`collapse_log_vars`).
    * ``loss_patch``: ``patch_loss`` (:class:`IBOTPatchLoss`) of student patch outputs vs the
      teacher's at the same positions of the same view, on the masked tokens.
    * ``loss_dc`` (``decoupling`` set): :class:`DecouplingBranch` samples (``prob`` * B extra per
      view, cut region or its complement replaced by another image's tokens, no masking): the
      patch cross-entropy on the kept tokens against the clean-view teacher, times
      ``loss_weight`` (0.3); no [CLS] loss for them.
    * ``loss_depos`` (``depositioning`` set): :class:`DepositioningBranch` composites; the
      student's box-pooled patch tokens at the new position (through the patch head) vs the
      teacher's box-pooled tokens of the region in the clean view, patch cross-entropy (patch
      centre and temperatures; our choice), times ``loss_weight``.

    Args:
        backbone (dict): :class:`CoTAPViT` config (iBOT ViT-S/16: ``arch='dino-s'``,
            ``drop_path_rate=0.1``).
        cls_head (dict): :class:`DINOProjectionHead` config (``in_channels`` defaults to the
            backbone width; iBOT: 8192 outputs, ``norm_last_layer=False``).
        patch_head (dict, optional): separate patch head; None shares ``cls_head``. Defaults to
            None.
        cls_loss (dict): Defaults to ``dict(type='DINOClsLoss')`` (``out_dim`` from the head).
        patch_loss (dict): Defaults to ``dict(type='IBOTPatchLoss')`` (``out_dim`` from the head).
        mask_key (str): data-sample field of the RCC masks. Defaults to 'rcc_mask'.
        num_global_crops (int): G when the metainfo does not say. Defaults to 2.
        decoupling (dict, optional): :class:`DecouplingBranch` kwargs, e.g.
            ``dict(prob=0.25, loss_weight=0.3)``; None disables. Defaults to None.
        depositioning (dict, optional): :class:`DepositioningBranch` kwargs; None disables.
            Defaults to None.
        data_preprocessor (dict, optional): Defaults to ``SelfSupDataPreprocessor``.
        init_cfg (dict, optional): Defaults to None.
    """

    def __init__(self,
                 backbone: dict,
                 cls_head: dict,
                 patch_head: Optional[dict] = None,
                 cls_loss: dict = dict(type='DINOClsLoss'),
                 patch_loss: dict = dict(type='IBOTPatchLoss'),
                 mask_key: str = 'rcc_mask',
                 num_global_crops: int = 2,
                 decoupling: Optional[dict] = None,
                 depositioning: Optional[dict] = None,
                 data_preprocessor: Optional[Union[dict, nn.Module]] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(backbone=backbone, data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        C = self.backbone.embed_dims
        if cls_head is None:
            raise ValueError('DDSSLiBOT needs a cls_head')
        self.cls_head = build_module(cls_head, 'cls_head', in_channels=C)
        self.patch_head = None if patch_head is None else build_module(
            patch_head, 'patch_head', in_channels=C)
        if isinstance(num_global_crops, bool) or not isinstance(num_global_crops,
                                                                int) or num_global_crops < 1:
            raise ValueError(f'num_global_crops must be a positive int, got {num_global_crops!r}')
        self.num_global_crops = num_global_crops
        self.mask_key = mask_key
        self.mask_token = nn.Parameter(torch.zeros(1, C))

        k_cls = self.cls_head.num_prototypes
        k_patch = self._patch_head_of(self).num_prototypes
        losses = []
        for cfg, k in ((cls_loss, k_cls), (patch_loss, k_patch)):
            if isinstance(cfg, dict):
                cfg = dict(cfg)
                cfg.setdefault('out_dim', k)
                cfg = MODELS.build(cfg)
            losses.append(cfg)
        self.cls_loss, self.patch_loss = losses
        self.decoupling = DecouplingBranch(**decoupling) if decoupling else None
        self.depositioning = DepositioningBranch(**depositioning) if depositioning else None

        self.build_teacher(('backbone', 'cls_head') + (
            ('patch_head', ) if self.patch_head is not None else ()))
        self.teacher.eval()

    # ------------------------------------------------------------------ structure
    @staticmethod
    def _patch_head_of(mods) -> nn.Module:
        get = (lambda k: mods[k] if k in mods else None) if isinstance(
            mods, nn.ModuleDict) else (lambda k: getattr(mods, k, None))
        head = get('patch_head')
        return head if head is not None else get('cls_head')

    def train(self, mode: bool = True) -> 'DDSSLiBOT':
        super().train(mode)
        self.teacher.eval()  # iBOT's teacher has no drop-path
        return self

    def extract_feat(self, inputs: Union[torch.Tensor, List[torch.Tensor]]) -> torch.Tensor:
        """Student patch features (after the final norm).

        Args:
            inputs (Tensor | list[Tensor]): images [B, 3, H, W] (a list: its first element).

        Returns:
            Tensor: [B, C, h, w].
        """
        x = first_view(inputs)
        tokens, (h, w), _ = self.backbone.forward_tokens(x, final_norm=True)
        e = self.backbone.num_extra_tokens
        return tokens[:, e:].transpose(1, 2).reshape(x.shape[0], -1, h, w)

    # ------------------------------------------------------------------ loss
    def _views(self, inputs: List[torch.Tensor],
               data_samples: List[DataSample]) -> Tuple[List[torch.Tensor], int]:
        if not isinstance(inputs, (list, tuple)) or not inputs or not data_samples:
            raise TypeError('DDSSLiBOT.loss expects inputs as a list of view batches '
                            '[B, 3, H, W] and a non-empty list of data samples')
        meta = data_samples[0].metainfo
        views = list(inputs[:int(meta['num_student_views'])]) if 'num_student_views' in meta \
            else list(inputs)
        G = int(meta.get('num_global_crops', self.num_global_crops))
        if not 1 <= G <= len(views):
            raise ValueError(f'num_global_crops={G} must be in [1, {len(views)} views]')
        if any(v.shape != views[0].shape for v in views[:G]):
            raise ValueError('the global views must share one shape, got '
                             f'{[tuple(v.shape) for v in views[:G]]}')
        return views, G

    def _head_logits(self, mods, cls_tok: torch.Tensor, patch_tok: torch.Tensor
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
        cls_head = mods['cls_head'] if isinstance(mods, nn.ModuleDict) else mods.cls_head
        return cls_head(cls_tok), self._patch_head_of(mods)(patch_tok)

    def loss(self, inputs: List[torch.Tensor], data_samples: List[DataSample],
             **kwargs) -> Dict[str, torch.Tensor]:
        """Compute ``loss_cls``, ``loss_patch`` and, when enabled, ``loss_dc`` / ``loss_depos``.

        Args:
            inputs (list[Tensor]): view batches, each [B, 3, H, W], global views first.
            data_samples (list[DataSample]): B samples carrying ``<mask_key>`` [>= G, h, w].

        Returns:
            dict[str, Tensor]: scalar losses.
        """
        views, G = self._views(inputs, data_samples)
        B = views[0].shape[0]
        e = self.backbone.num_extra_tokens
        first = data_samples[0].get(self.mask_key) if self.mask_key in data_samples[0] else None
        if first is None:
            raise KeyError(f'data_samples have no field {self.mask_key!r}: add '
                           f'RegionCollaborativeCutout and PackInputs(algorithm_keys='
                           f"['{self.mask_key}'])")
        hw = tuple(int(s) for s in first.shape[-2:])
        stride = self.backbone.patch_embed.projection.stride
        view_hw = (views[0].shape[-2] // stride[0], views[0].shape[-1] // stride[1])
        if view_hw != hw:
            raise ValueError(f'the {self.mask_key} masks are {hw} but the views give a '
                             f'{view_hw} patch grid')
        masks = masks_from_data_samples(data_samples, self.mask_key, G, hw, views[0].device)
        N = hw[0] * hw[1]

        # ---- student rows: G normal view batches, de-coupling rows, de-positioning rows
        rows = stack_extra_rows(views[:G], hw, self.decoupling, self.depositioning, masks,
                                data_samples)
        mim = torch.zeros(rows.images.shape[0], N, dtype=torch.bool, device=masks.device)
        mim[:G * B] = masks.reshape(G * B, N)
        s_tokens, s_hw, _ = self.backbone.forward_tokens(
            rows.images, final_norm=True, replace=rows.replace, donor_index=rows.donor_index,
            mim_mask=mim, mask_token=self.mask_token)
        if tuple(s_hw) != hw:
            raise ValueError(f'the {self.mask_key} masks are {hw} but the views give a '
                             f'{tuple(s_hw)} patch grid')
        s_cls = [s_tokens[:G * B, 0]]
        for v in views[G:]:  # local crops: [CLS] loss only, no masking
            s_cls.append(self.backbone.forward_tokens(v, final_norm=True).tokens[:, 0])

        # ---- teacher: clean global views
        with torch.no_grad():
            t_tokens = self.teacher['backbone'].forward_tokens(torch.cat(views[:G]),
                                                               final_norm=True).tokens
            t_cls_logits, t_patch_logits = self._head_logits(self.teacher, t_tokens[:, 0],
                                                             t_tokens[:, e:])
        t_patch_logits = t_patch_logits.reshape(G, B, N, -1)

        losses: Dict[str, torch.Tensor] = {}
        s_cls_logits = self.cls_head(torch.cat(s_cls)).reshape(len(views), B, -1)
        E = rows.num_extra
        s_patch_logits = self._patch_head_of(self)(s_tokens[:G * (B + E), e:])
        s_normal = s_patch_logits[:G * B].reshape(G, B, *s_patch_logits.shape[1:])
        s_extra = s_patch_logits[G * B:].reshape(G, E, *s_patch_logits.shape[1:])
        # the extra terms first: they use the centre before this step's update (as iBOT)
        if self.decoupling is not None:
            losses['loss_dc'] = (s_extra.sum() * 0.0 if rows.decoupling is None else
                                 self.decoupling.loss(self.patch_loss.cross_entropy, s_extra,
                                                      t_patch_logits, rows.decoupling))
        if self.depositioning is not None:
            losses['loss_depos'] = self._depos_term(rows.depositioning, s_tokens, t_tokens, hw,
                                                    B, e)
        losses['loss_cls'] = self.cls_loss(s_cls_logits, t_cls_logits.reshape(G, B, -1),
                                           list(range(len(views))), list(range(G)))
        losses.update(collapse_log_vars(self.cls_loss, 'cls_'))  # logged, not summed
        losses['loss_patch'] = self.patch_loss(s_normal, t_patch_logits, masks.reshape(G, B, N))
        return losses

    def _depos_term(self, dp_batches, s_tokens: torch.Tensor, t_tokens: torch.Tensor,
                    hw: Tuple[int, int], B: int, e: int) -> torch.Tensor:
        if not dp_batches:
            return self.mask_token.sum() * 0.0
        s_reg, t_reg = [], []
        for g, off, dp in dp_batches:
            K = dp.images.shape[0]
            s_reg.append(box_pool_tokens(s_tokens[off:off + K, e:], hw, dp.dst_boxes))
            t_reg.append(box_pool_tokens(t_tokens[g * B + dp.source_index, e:], hw, dp.src_boxes))
        K = s_reg[0].shape[0]
        if any(r.shape[0] != K for r in s_reg):
            raise RuntimeError('de-positioning: views produced different numbers of regions')
        s_logits = self._patch_head_of(self)(torch.stack(s_reg))  # [G', K, D]
        with torch.no_grad():
            t_logits = self._patch_head_of(self.teacher)(torch.stack(t_reg))
        return self.depositioning.loss(self.patch_loss.cross_entropy, s_logits, t_logits)

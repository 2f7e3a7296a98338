"""DINO: self-distillation with no labels, the image-level start CoTAP post-pretrains.

Paper: Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021,
https://arxiv.org/abs/2104.14294.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from ..losses.dino_cls_loss import collapse_log_vars
from ..utils.module_builder import build_module
from ..utils.view_layout import packed_view_counts, teacher_global_views
from .base import TeacherStudentSelfSupervisor, first_view

__all__ = ['DINO', 'with_out_dim']


def with_out_dim(cfg: Union[dict, nn.Module], out_dim: int) -> Union[dict, nn.Module]:
    """Fill ``out_dim`` of a :class:`DINOClsLoss` config from the head width."""
    if isinstance(cfg, dict):
        cfg = dict(cfg)
        if cfg.get('type') in ('DINOClsLoss', 'mmpretrain.DINOClsLoss'):
            cfg.setdefault('out_dim', out_dim)
    return cfg


@MODELS.register_module()
class DINO(TeacherStudentSelfSupervisor):
    """DINO multi-crop self-distillation (student / EMA teacher, centred and sharpened teacher).

    Paper: `Emerging Properties in Self-Supervised Vision Transformers
    <https://arxiv.org/abs/2104.14294>`_. ``loss_dino`` (:class:`DINOClsLoss`) compares the head
    outputs of all V student crops (G global first) with the teacher's of the G global crops,
    pairs of different crops; logged with it: the teacher entropies and the KL (collapse
    diagnostics). Views from ``GeometricMultiView`` + ``PackGeometricViews``.

    Args:
        backbone (dict): a ViT with :meth:`CoTAPViT.forward_tokens` for ``dino_feature='cls'``;
            any backbone returning [N, C, h, w] maps for ``'gap'``.
        head (dict): :class:`DINOProjectionHead` (``in_channels`` = the feature width).
        dino_loss (dict): Defaults to ``dict(type='DINOClsLoss')`` (``out_dim`` = head width).
        dino_feature (str): 'cls' (CLS token after the final norm) or 'gap' (global average of
            the last map). Defaults to 'cls'.
        teacher_input (str): 'student' (the teacher sees the student's global crops) or 'clean'
            (the packed un-jittered copies). Defaults to 'student'.
        freeze_last_layer_iters (int): training steps during which the head's last layer gets no
            gradient (``grad=None``). Defaults to 0.
        data_preprocessor (dict, optional): Defaults to ``SelfSupDataPreprocessor``.
        init_cfg (dict, optional): Defaults to None.
    """

    _who = 'DINO'
    _min_global = 1

    def __init__(self,
                 backbone: dict,
                 head: dict,
                 dino_loss: dict = dict(type='DINOClsLoss'),
                 dino_feature: str = 'cls',
                 teacher_input: str = 'student',
                 freeze_last_layer_iters: int = 0,
                 data_preprocessor: Optional[Union[dict, nn.Module]] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(backbone=backbone, data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if dino_feature not in ('gap', 'cls'):
            raise ValueError(f"dino_feature must be 'gap' or 'cls', got {dino_feature!r}")
        if teacher_input not in ('student', 'clean'):
            raise ValueError(f"teacher_input must be 'student' or 'clean', got {teacher_input!r}")
        if dino_feature == 'cls':
            if not hasattr(self.backbone, 'forward_tokens'):
                raise ValueError("dino_feature='cls' needs a ViT backbone with forward_tokens() "
                                 f'(e.g. CoTAPViT), got {type(self.backbone).__name__}')
            if getattr(self.backbone, 'cls_token', None) is None:
                raise ValueError("dino_feature='cls' needs a backbone with a CLS token "
                                 '(with_cls_token=True)')
        n = freeze_last_layer_iters
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f'freeze_last_layer_iters must be a non-negative int, got {n!r}')
        self.dino_feature = dino_feature
        self.teacher_input = teacher_input
        self.freeze_last_layer_iters = n
        self.head = build_module(head, 'head')
        if n and not all(hasattr(self.head, a) for a in ('mlp', 'last_layer_weight')):
            raise ValueError('freeze_last_layer_iters > 0 needs a DINOProjectionHead-like head '
                             f'(mlp, last_layer_weight), got {type(self.head).__name__}')
        self.dino_loss = build_module(
            with_out_dim(dino_loss, int(getattr(self.head, 'num_prototypes', 0))), 'dino_loss')
        self.stage_heads = nn.ModuleList()  # SCFS fills it; empty: no checkpoint keys
        self._build_extra()
        self.build_teacher(('backbone', 'head', 'stage_heads'))
        self.register_step_counter('num_iters')

    def _build_extra(self) -> None:
        """Subclasses (SCFS) build their own modules here, before the teacher is copied."""

    # ------------------------------------------------------------------ features
    def _backbone_maps(self, backbone: nn.Module, x: torch.Tensor
                       ) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
        """The backbone's feature maps [N, C, h, w] of the layers the subclass reads (none for
        DINO with a ViT) and, with ``dino_feature='cls'``, the final CLS token [N, C]."""
        if self.dino_feature == 'cls':
            out = backbone.forward_tokens(x, final_norm=True,
                                          out_layers=self._out_layers(backbone))
            h, w = out.hw
            maps = [t[:, -h * w:].transpose(1, 2).reshape(x.shape[0], -1, h, w)
                    for t in out.layers]
            return maps, out.tokens[:, 0]
        outs = backbone(x)
        return (list(outs) if isinstance(outs, (list, tuple)) else [outs]), None

    def _out_layers(self, backbone: nn.Module) -> Sequence[int]:
        return ()

    def _features(self, backbone: nn.Module,
                  x: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Stage maps (none for DINO) and the image-level feature [N, D] of the DINO loss."""
        maps, final = self._backbone_maps(backbone, x)
        return [], final if final is not None else maps[-1].mean(dim=(2, 3))

    def _encode_views(self, backbone: nn.Module, views: Sequence[torch.Tensor]
                      ) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Run views of one role (global or local crops, one size) as one batch, view-major."""
        sizes = {tuple(v.shape[-2:]) for v in views}
        if len(sizes) != 1:
            raise ValueError('views of one role (global / local) must share one size, got sizes '
                             f'{sorted(sizes)}')
        return self._features(backbone, torch.cat(list(views)))

    def extract_feat(self, inputs: Union[torch.Tensor, List[torch.Tensor]]) -> Tuple[torch.Tensor]:
        """Student backbone outputs (mmpretrain convention), e.g. the patch-token maps of a ViT.

        Args:
            inputs (Tensor | list[Tensor]): images [B, 3, H, W] (a list: its first element).

        Returns:
            tuple[Tensor]: the backbone's outputs.
        """
        out = self.backbone(first_view(inputs))
        return tuple(out) if isinstance(out, (list, tuple)) else (out, )

    # ------------------------------------------------------------------ loss
    def _split_views(self, inputs: List[torch.Tensor], data_samples: List[DataSample]
                     ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        """Global student views, local student views and the teacher's global views."""
        V, T, G = packed_view_counts(inputs, data_samples, self._who, min_global=self._min_global)
        global_views, local_views = list(inputs[:G]), list(inputs[G:V])
        if self.teacher_input == 'student':
            return global_views, local_views, global_views
        return global_views, local_views, teacher_global_views(inputs, data_samples, V, T, G)

    def _head_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Student head outputs; the last layer gets no gradient while it is frozen."""
        frozen = self.training and (self.step_count('num_iters') < self.freeze_last_layer_iters)
        if self.training:
            self.count_step('num_iters')
        if not frozen:
            return self.head(x)
        z = F.normalize(self.head.mlp(x), dim=-1)
        return F.linear(z, self.head.last_layer_weight().detach().to(z.dtype))

    def loss(self, inputs: List[torch.Tensor], data_samples: List[DataSample],
             **kwargs) -> Dict[str, torch.Tensor]:
        """``loss_dino`` (and, in SCFS, the stage terms).

        Args:
            inputs (list[Tensor]): V student views then T teacher views, each [B, 3, H, W].
            data_samples (list[DataSample]): B samples from :class:`PackGeometricViews`.

        Returns:
            dict[str, Tensor]: scalar losses and the logged collapse diagnostics.
        """
        global_views, local_views, teacher_views = self._split_views(inputs, data_samples)
        G, L, B = len(global_views), len(local_views), global_views[0].shape[0]
        s_maps_g, s_final_g = self._encode_views(self.backbone, global_views)
        if local_views:
            s_maps_l, s_final_l = self._encode_views(self.backbone, local_views)
        else:  # the two global crops only
            s_maps_l, s_final_l = [], s_final_g.new_zeros((0, ) + s_final_g.shape[1:])
        with torch.no_grad():
            t_maps_g, t_final_g = self._encode_views(self.teacher['backbone'], teacher_views)
            t_logits = self.teacher['head'](t_final_g).reshape(G, B, -1)

        s_logits = self._head_logits(torch.cat([s_final_g, s_final_l])).reshape(G + L, B, -1)
        losses = dict(loss_dino=self.dino_loss(s_logits, t_logits, list(range(G + L)),
                                               list(range(G))))
        losses.update(collapse_log_vars(self.dino_loss, 'dino_'))  # logged, not summed
        losses.update(self._stage_losses(s_maps_g, s_maps_l, t_maps_g, G, L, B))
        return losses

    def _stage_losses(self, s_maps_g: List[torch.Tensor], s_maps_l: List[torch.Tensor],
                      t_maps_g: List[torch.Tensor], G: int, L: int,
                      B: int) -> Dict[str, torch.Tensor]:
        """Terms on the backbone's stage maps: none for DINO (SCFS adds its own)."""
        return {}

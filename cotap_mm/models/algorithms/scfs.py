"""SCFS: DINO self-distillation plus semantics-consistent feature search at several stages.

Paper: Song et al., "Semantics-Consistent Feature Search for Self-Supervised Visual Representation
Learning", ICCV 2023, https://arxiv.org/abs/2212.06486.
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from ..utils.module_builder import build_module
from .dino import DINO, with_out_dim
from .scfs_ops import SEARCH_WEIGHTINGS, feature_search

__all__ = ['SCFS']


@MODELS.register_module()
class SCFS(DINO):
    """SCFS pretraining: :class:`DINO` plus, per searched backbone stage, a global term and a
    feature-search term (docs/methods.md describes both and how they follow the official code).

    Paper: `Semantics-Consistent Feature Search for Self-Supervised Visual Representation Learning
    <https://arxiv.org/abs/2212.06486>`_ (ICCV 2023). ``backbone(x)`` gives one [N, C_l, h_l, w_l]
    map per stage (ResNet ``out_indices=(1, 2, 3)``, or a ViT with ``out_type='featmap'``); with
    ``dino_feature='cls'`` the ViT's ``out_indices`` tokens are read from
    :meth:`CoTAPViT.forward_tokens`. Losses: ``loss_dino``, ``loss_global_i`` (stage heads of the
    global crops, student vs teacher) and ``loss_search_i`` (student stage head of each local crop
    vs the teacher stage head of the searched global-crop map, :func:`feature_search`).

    Args:
        backbone, head, dino_loss, dino_feature, teacher_input, freeze_last_layer_iters,
            data_preprocessor, init_cfg: as :class:`DINO` (``dino_feature`` defaults to 'gap',
            the official ResNet feature).
        stage_head (dict): :class:`SCFSHead` config, built per stage with ``in_channels`` from
            ``stage_channels``.
        stage_channels (Sequence[int]): C_l of every searched stage, shallow to deep (ResNet-50:
            (512, 1024, 2048)).
        stage_global_loss (dict, optional): per stage; None disables it. Defaults to
            ``DINOClsLoss`` with ``loss_weight=0.5``.
        search_loss (dict, optional): per stage; None disables it. Defaults to ``DINOClsLoss``
            with ``center_momentum=1.0`` (no centring) and ``loss_weight=0.5``.
        search_cfg (dict, optional): :func:`feature_search` kwargs (``weighting``,
            ``temperature``, ``eps``). Defaults to ``dict(weighting='cosine')``.
        search_view (int): the global crop searched. Defaults to 0.
    """

    _who = 'SCFS'
    _min_global = 2

    def __init__(self,
                 backbone: dict,
                 head: dict,
                 stage_head: dict,
                 stage_channels: Sequence[int],
                 dino_loss: dict = dict(type='DINOClsLoss'),
                 stage_global_loss: Optional[dict] = dict(type='DINOClsLoss', loss_weight=0.5),
                 search_loss: Optional[dict] = dict(
                     type='DINOClsLoss', center_momentum=1.0, loss_weight=0.5),
                 search_cfg: Optional[dict] = None,
                 search_view: int = 0,
                 dino_feature: str = 'gap',
                 teacher_input: str = 'student',
                 freeze_last_layer_iters: int = 0,
                 data_preprocessor: Optional[Union[dict, nn.Module]] = None,
                 init_cfg: Optional[dict] = None) -> None:
        if stage_head is None:
            raise ValueError('SCFS needs a stage_head (without stages it is DINO: use '
                             "type='DINO')")
        if (not isinstance(stage_channels, (list, tuple)) or not stage_channels or not all(
                isinstance(c, int) and not isinstance(c, bool) and c > 0
                for c in stage_channels)):
            raise ValueError(f'stage_channels must be a non-empty sequence of positive ints, got '
                             f'{stage_channels!r}')
        if isinstance(search_view, bool) or not isinstance(search_view, int) or search_view < 0:
            raise ValueError(f'search_view must be a non-negative int, got {search_view!r}')
        cfg = dict(weighting='cosine')
        cfg.update(search_cfg or {})
        if set(cfg) - {'weighting', 'temperature', 'eps'} or cfg['weighting'] not in \
                SEARCH_WEIGHTINGS:
            raise ValueError(f'search_cfg takes weighting in {SEARCH_WEIGHTINGS}, temperature and '
                             f'eps, got {search_cfg!r}')
        self.search_cfg = cfg
        self.stage_channels = tuple(stage_channels)
        self.search_view = search_view
        self._stage_cfgs = (stage_head, stage_global_loss, search_loss)
        super().__init__(backbone=backbone, head=head, dino_loss=dino_loss,
                         dino_feature=dino_feature, teacher_input=teacher_input,
                         freeze_last_layer_iters=freeze_last_layer_iters,
                         data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        del self._stage_cfgs

    def _build_extra(self) -> None:
        stage_head, stage_global_loss, search_loss = self._stage_cfgs
        for c in self.stage_channels:
            cfg = dict(stage_head, in_channels=c) if isinstance(stage_head, dict) else stage_head
            self.stage_heads.append(build_module(copy.deepcopy(cfg), 'stage_head'))
        dim = int(getattr(self.stage_heads[0], 'out_channels', 0))
        self.stage_global_losses = None if stage_global_loss is None else nn.ModuleList(
            build_module(with_out_dim(copy.deepcopy(stage_global_loss), dim),
                         'stage_global_loss') for _ in self.stage_channels)
        self.search_losses = None if search_loss is None else nn.ModuleList(
            build_module(with_out_dim(copy.deepcopy(search_loss), dim), 'search_loss')
            for _ in self.stage_channels)

    # ------------------------------------------------------------------ features
    def _out_layers(self, backbone: nn.Module) -> Sequence[int]:
        return sorted({int(i) % len(backbone.layers) for i in backbone.out_indices})

    def _features(self, backbone: nn.Module,
                  x: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Stage maps [N, C_l, h_l, w_l] (shallow to deep) and the DINO feature [N, D]."""
        maps, final = self._backbone_maps(backbone, x)
        if len(maps) != len(self.stage_channels):
            raise ValueError(f'the backbone returned {len(maps)} feature maps, stage_channels '
                             f'{self.stage_channels} expects {len(self.stage_channels)} (check '
                             "out_indices and out_type='featmap')")
        for m, c in zip(maps, self.stage_channels):
            if m.dim() != 4 or m.shape[1] != c:
                shapes = [tuple(t.shape) for t in maps]
                raise ValueError(f'backbone outputs must be [N, C, h, w] with C in stage_channels '
                                 f'{self.stage_channels}, got shapes {shapes}')
        return maps, final if final is not None else maps[-1].mean(dim=(2, 3))

    def extract_feat(self, inputs: Union[torch.Tensor, List[torch.Tensor]]) -> Tuple[torch.Tensor]:
        """Student feature maps of the searched stages, one [B, C_l, h_l, w_l] map each.

        Args:
            inputs (Tensor | list[Tensor]): images [B, 3, H, W] (a list: its first element).
        """
        x = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        return tuple(self._features(self.backbone, x)[0])

    # ------------------------------------------------------------------ loss
    def _split_views(self, inputs: List[torch.Tensor], data_samples: List[DataSample]
                     ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        global_views, local_views, teacher_views = super()._split_views(inputs, data_samples)
        if not local_views and self.search_losses is not None:
            raise ValueError(f'SCFS needs at least one local crop for the feature search, got '
                             f'{len(global_views)} global crops only')
        if self.search_view >= len(global_views):
            raise ValueError(f'search_view={self.search_view} must be < num_global_crops='
                             f'{len(global_views)}')
        return global_views, local_views, teacher_views

    def _stage_losses(self, s_maps_g: List[torch.Tensor], s_maps_l: List[torch.Tensor],
                      t_maps_g: List[torch.Tensor], G: int, L: int,
                      B: int) -> Dict[str, torch.Tensor]:
        """``loss_global_i`` and ``loss_search_i`` of every stage ``i``."""
        losses: Dict[str, torch.Tensor] = {}
        for i in range(len(self.stage_channels)):
            s_head, t_head = self.stage_heads[i], self.teacher['stage_heads'][i]
            if self.stage_global_losses is not None:
                z_s = s_head(s_maps_g[i]).reshape(G, B, -1)
                with torch.no_grad():
                    z_t = t_head(t_maps_g[i]).reshape(G, B, -1)
                losses[f'loss_global_{i}'] = self.stage_global_losses[i](
                    z_s, z_t, list(range(G)), list(range(G)))
            if self.search_losses is not None:
                with torch.no_grad():
                    query = s_maps_l[i].detach().mean(dim=(2, 3))  # [L*B, C], view-major
                    keys = t_maps_g[i][self.search_view * B:(self.search_view + 1) * B]
                    searched, _ = feature_search(query, keys.repeat(L, 1, 1, 1),
                                                 **self.search_cfg)
                    z_t = t_head(searched)
                z_s = s_head(s_maps_l[i])
                # one (student local crop, teacher searched map) pair per row: ids 1 vs 0
                losses[f'loss_search_{i}'] = self.search_losses[i](z_s[None], z_t[None], [1], [0])
        return losses

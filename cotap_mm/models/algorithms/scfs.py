"""SCFS: DINO self-distillation plus semantics-consistent feature search at several stages.

Paper: Song et al., "Semantics-Consistent Feature Search for Self-Supervised Visual Representation
Learning", ICCV 2023, https://arxiv.org/abs/2212.06486 (official code: github.com/skyoux/scfs).
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmpretrain.models.selfsup.base import BaseSelfSupervisor
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from ..losses.dino_cls_loss import collapse_log_vars
from .module_builder import build_module
from .scfs_ops import SEARCH_WEIGHTINGS, feature_search
from .teacher_student import TeacherStudentMixin
from .view_layout import packed_view_counts, teacher_global_views

__all__ = ['SCFS']

_STUDENT_KEYS = ('backbone', 'head', 'stage_heads')


def _with_out_dim(cfg: Union[dict, nn.Module], out_dim: int) -> Union[dict, nn.Module]:
    """Fill ``out_dim`` of a :class:`DINOClsLoss` config from the head width."""
    if isinstance(cfg, dict):
        cfg = dict(cfg)
        if cfg.get('type') in ('DINOClsLoss', 'mmpretrain.DINOClsLoss'):
            cfg.setdefault('out_dim', out_dim)
    return cfg


@MODELS.register_module()
class SCFS(TeacherStudentMixin, BaseSelfSupervisor):
    """SCFS pretraining (student / EMA teacher) with a ResNet or a ViT backbone.

    Paper: `Semantics-Consistent Feature Search for Self-Supervised Visual Representation Learning
    <https://arxiv.org/abs/2212.06486>`_ (ICCV 2023). Everything below follows the official code;
    the paper's full text was not available.

    **Modules.** The student is ``backbone``, ``head`` (DINO head, :class:`DINOProjectionHead`)
    and ``stage_heads`` (``nn.ModuleList`` of one :class:`SCFSHead` per searched stage), all
    direct submodules (checkpoints keep mmpretrain's ``backbone.*`` keys). ``teacher`` is an
    ``nn.ModuleDict`` with the same three keys (deep copies, ``requires_grad=False``) updated by
    :class:`~cotap_mm.engine.hooks.ema_teacher_hook.EMATeacherHook` (official: momentum 0.996 ->
    1, cosine); :attr:`student` is an unregistered ``ModuleDict`` view of the student modules; the
    bool buffer ``teacher_initialized`` tells the hook whether the teacher was already copied.

    **Backbone features.** ``backbone(x)`` must return one [N, C_l, h_l, w_l] map per searched
    stage (``len(stage_channels)`` maps, shallow to deep): mmpretrain ``ResNet`` with
    ``out_indices=(1, 2, 3)`` (layer2-4, official), or a ViT with ``out_type='featmap'``
    (e.g. :class:`CoTAPViT`, ``out_indices`` at 1/3, 2/3 and the end of the depth: our choice, the
    paper has no ViT results). The image-level feature of the DINO loss (``dino_feature``):
    ``'gap'`` = global average pooling of the last map (official, ResNet); ``'cls'`` = the CLS
    token of the last block after the final norm (DINO's ViT feature; needs a ViT exposing
    ``embed``/``layers``/``out_indices``/``final_norm``/``ln1`` such as :class:`CoTAPViT`, which is
    then run block by block here).

    **Views** (``PackGeometricViews`` + ``SelfSupDataPreprocessor``): ``inputs`` = V student views
    (G = ``num_global_crops`` global crops, then V - G local crops) followed by T teacher views.
    ``teacher_input='student'`` (default, DINO/SCFS): the teacher sees the *same augmented*
    global crops as the student and the packed teacher copies are ignored; ``'clean'``: the
    teacher sees the packed clean copies of the global crops (``teacher_view_indices``).

    **Losses** (returned keys; mmengine sums them). ``i`` is the position of the stage in the
    backbone outputs (0 = shallowest searched stage):

    * ``loss_dino`` (L_d): ``dino_loss`` (:class:`DINOClsLoss`, centred teacher) between the DINO
      head outputs of all V student crops and the teacher's of the G global crops, pairs of
      different crops.
    * ``loss_global_i`` (L_g^l, official code, not in Fig. 2): ``stage_global_losses[i]``
      (:class:`DINOClsLoss` with its own centre) between the stage heads' outputs of the G
      student global crops and the teacher's of the G global crops, pairs of different crops:
      ``1/2 [H(t_g1, s_g2) + H(t_g2, s_g1)]`` for G = 2.
    * ``loss_search_i`` (L_fs^l): for every local crop, the query is the L2-normalised GAP of the
      student's stage map (detached); the key map is the teacher's stage map of global crop
      ``search_view`` of the same image (official: the first); :func:`feature_search` gives the
      searched map ``A ⊙ F'_g`` (``search_cfg``: ``weighting='cosine'``, official, i.e.
      ``A(p) = cos(q, F'_g(p))``; or ``'softmax'`` with a ``temperature``). Loss: ``search_loss``
      between the student stage head of the local crop and the teacher stage head of the
      searched map, averaged over the local crops and the batch. Official: the teacher side is
      **not** centred, i.e. :class:`DINOClsLoss` with ``center_momentum=1.0`` (the centre stays 0).

    * Logged only (no ``loss`` in the key, so not summed): ``dino_teacher_entropy``,
      ``dino_teacher_marginal_entropy`` and ``dino_kl`` of ``loss_dino``, DINO's collapse
      diagnostics (:meth:`DINOClsLoss.forward`).

    Total (official): ``L = L_d + sum_l 1/2 (L_g^l + L_fs^l)``: the 1/2 is the ``loss_weight=0.5``
    of the stage losses. Teacher temperature 0.04 -> 0.07 (warm-up) and student temperature 0.1
    for all terms (set in the loss configs).

    Args:
        backbone (dict): backbone config (see above).
        head (dict): DINO head (:class:`DINOProjectionHead`; official: hidden 2048, bottleneck
            256, 65536 prototypes). ``in_channels`` must be the width of the DINO feature.
        stage_head (dict, optional): :class:`SCFSHead` config, built once per stage with
            ``in_channels`` set from ``stage_channels``. ``None`` (with both stage losses
            ``None`` and ``stage_channels=()``): no stage heads, i.e. plain DINO (:class:`DINO`).
        stage_channels (Sequence[int]): C_l of every searched backbone output, shallow to deep
            (ResNet-50: (512, 1024, 2048)); ``()`` only without ``stage_head``.
        dino_loss (dict): Defaults to ``dict(type='DINOClsLoss')`` (``out_dim`` = head width).
        stage_global_loss (dict, optional): built per stage; ``None`` disables L_g. Defaults to
            ``DINOClsLoss`` with ``loss_weight=0.5``.
        search_loss (dict, optional): built per stage; ``None`` disables L_fs. Defaults to
            ``DINOClsLoss`` with ``center_momentum=1.0`` (no centring) and ``loss_weight=0.5``.
        search_cfg (dict, optional): kwargs of :func:`feature_search` (``weighting``,
            ``temperature``). Defaults to ``dict(weighting='cosine')``.
        search_view (int): index of the global crop searched (official 0). Defaults to 0.
        dino_feature (str): 'gap' or 'cls'. Defaults to 'gap'.
        teacher_input (str): 'student' or 'clean'. Defaults to 'student'.
        freeze_last_layer_iters (int): during the first this many training calls of
            :meth:`loss` the DINO head's weight-normalised last layer gets no gradient (official
            DINO/SCFS: frozen for the first epoch; ``p.grad = None``, so the optimiser skips it
            and ``find_unused_parameters=True`` is needed under DDP). Needs a
            :class:`DINOProjectionHead`. Counted by the buffer ``num_iters``. Defaults to 0.
        data_preprocessor (dict, optional): Defaults to ``SelfSupDataPreprocessor``.
        init_cfg (dict, optional): Defaults to None.
    """

    def __init__(self,
                 backbone: dict,
                 head: dict,
                 stage_head: Optional[dict],
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
        super().__init__(backbone=backbone, data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if stage_head is None:
            if stage_channels or stage_global_loss is not None or search_loss is not None:
                raise ValueError('stage_head=None (DINO without stages) needs stage_channels=() '
                                 'and stage_global_loss=search_loss=None, got stage_channels='
                                 f'{stage_channels!r}, stage_global_loss={stage_global_loss!r}, '
                                 f'search_loss={search_loss!r}')
        elif (not isinstance(stage_channels, (list, tuple)) or not stage_channels or not all(
                isinstance(c, int) and not isinstance(c, bool) and c > 0
                for c in stage_channels)):
            raise ValueError(f'stage_channels must be a non-empty sequence of positive ints, got '
                             f'{stage_channels!r}')
        if dino_feature not in ('gap', 'cls'):
            raise ValueError(f"dino_feature must be 'gap' or 'cls', got {dino_feature!r}")
        if teacher_input not in ('student', 'clean'):
            raise ValueError(f"teacher_input must be 'student' or 'clean', got {teacher_input!r}")
        if isinstance(search_view, bool) or not isinstance(search_view, int) or search_view < 0:
            raise ValueError(f'search_view must be a non-negative int, got {search_view!r}')
        if dino_feature == 'cls':
            missing = [a for a in ('embed', 'layers', 'out_indices', 'final_norm')
                       if not hasattr(self.backbone, a)]
            if missing:
                raise ValueError("dino_feature='cls' needs a ViT backbone with embed(), layers, "
                                 f'out_indices and final_norm (e.g. CoTAPViT); '
                                 f'{type(self.backbone).__name__} lacks {missing}')
            if getattr(self.backbone, 'cls_token', None) is None:
                raise ValueError("dino_feature='cls' needs a backbone with a CLS token "
                                 '(with_cls_token=True)')
        n_freeze = freeze_last_layer_iters
        if isinstance(n_freeze, bool) or not isinstance(n_freeze, int) or n_freeze < 0:
            raise ValueError('freeze_last_layer_iters must be a non-negative int, got '
                             f'{freeze_last_layer_iters!r}')
        self.freeze_last_layer_iters = freeze_last_layer_iters
        self.search_cfg = dict(weighting='cosine')
        self.search_cfg.update(search_cfg or {})
        unknown = set(self.search_cfg) - {'weighting', 'temperature', 'eps'}
        if unknown or self.search_cfg['weighting'] not in SEARCH_WEIGHTINGS:
            raise ValueError(f'search_cfg takes weighting in {SEARCH_WEIGHTINGS}, temperature and '
                             f'eps, got {search_cfg!r}')
        self.stage_channels = tuple(stage_channels)
        self.search_view = search_view
        self.dino_feature = dino_feature
        self.teacher_input = teacher_input

        self.head = build_module(head, 'head')
        if freeze_last_layer_iters and not all(
                hasattr(self.head, a) for a in ('mlp', 'last_layer_weight')):
            raise ValueError('freeze_last_layer_iters > 0 needs a DINOProjectionHead-like head '
                             f'(mlp, last_layer_weight), got {type(self.head).__name__}')
        stage_heads = []
        for c in self.stage_channels:
            cfg = stage_head
            if isinstance(cfg, dict):
                cfg = dict(cfg, in_channels=c)
            stage_heads.append(build_module(copy.deepcopy(cfg), 'stage_head'))
        self.stage_heads = nn.ModuleList(stage_heads)

        head_dim = int(getattr(self.head, 'num_prototypes', 0))
        stage_dim = int(getattr(self.stage_heads[0], 'out_channels', 0)) if stage_heads else 0
        self.dino_loss = build_module(_with_out_dim(dino_loss, head_dim), 'dino_loss')
        self.stage_global_losses = None if stage_global_loss is None else nn.ModuleList(
            build_module(_with_out_dim(copy.deepcopy(stage_global_loss), stage_dim),
                         'stage_global_loss')
            for _ in self.stage_channels)
        self.search_losses = None if search_loss is None else nn.ModuleList(
            build_module(_with_out_dim(copy.deepcopy(search_loss), stage_dim), 'search_loss')
            for _ in self.stage_channels)

        self._init_teacher(_STUDENT_KEYS)
        self.register_buffer('num_iters', torch.tensor(0, dtype=torch.long))

    # ------------------------------------------------------------------ features
    def _features(self, backbone: nn.Module,
                  x: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Stage maps [N, C_l, h_l, w_l] (shallow to deep) and the DINO feature [N, D]."""
        if self.dino_feature == 'cls':
            tokens, (h, w) = backbone.embed(x)
            out_ids = {int(i) % len(backbone.layers) for i in backbone.out_indices}
            maps = []
            for i, layer in enumerate(backbone.layers):
                tokens = layer(tokens)
                if i == len(backbone.layers) - 1 and backbone.final_norm:
                    tokens = backbone.ln1(tokens)
                if i in out_ids:
                    patches = tokens[:, -h * w:]
                    maps.append(patches.transpose(1, 2).reshape(x.shape[0], -1, h, w))
            final = tokens[:, 0]
        else:
            outs = backbone(x)
            maps = list(outs) if isinstance(outs, (list, tuple)) else [outs]
            final = None
        if not self.stage_channels:  # DINO: no searched stages, only the image-level feature
            return [], final if final is not None else maps[-1].mean(dim=(2, 3))
        if len(maps) != len(self.stage_channels):
            raise ValueError(f'the backbone returned {len(maps)} feature maps, stage_channels '
                             f'{self.stage_channels} expects {len(self.stage_channels)} (check '
                             "out_indices and out_type='featmap')")
        for m, c in zip(maps, self.stage_channels):
            if m.dim() != 4 or m.shape[1] != c:
                shapes = [tuple(t.shape) for t in maps]
                raise ValueError(f'backbone outputs must be [N, C, h, w] with C in stage_channels '
                                 f'{self.stage_channels}, got shapes {shapes}')
        if final is None:
            final = maps[-1].mean(dim=(2, 3))
        return maps, final

    def _encode_views(self, backbone: nn.Module, views: Sequence[torch.Tensor]
                      ) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Run views of one role (global or local crops, one size) as one batch, view-major."""
        sizes = {tuple(v.shape[-2:]) for v in views}
        if len(sizes) != 1:
            raise ValueError('views of one role (global / local) must share one size, got sizes '
                             f'{sorted(sizes)}')
        return self._features(backbone, torch.cat(list(views)))

    def extract_feat(self, inputs: Union[torch.Tensor, List[torch.Tensor]]) -> Tuple[torch.Tensor]:
        """Student backbone feature maps of the searched stages.

        Args:
            inputs (Tensor | list[Tensor]): images [B, 3, H, W] (a list: its first element).

        Returns:
            tuple[Tensor]: one [B, C_l, h_l, w_l] map per stage.
        """
        x = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        return tuple(self._features(self.backbone, x)[0])

    # ------------------------------------------------------------------ inputs
    def _split_views(self, inputs: List[torch.Tensor], data_samples: List[DataSample]
                     ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        """Global student views, local student views and the teacher's global views."""
        V, T, G = packed_view_counts(inputs, data_samples, 'SCFS', min_global=2)
        if V - G < 1 and self.search_losses is not None:
            raise ValueError(f'SCFS needs at least one local crop for the feature search, got '
                             f'{V} student views of which {G} global')
        if self.search_view >= G:
            raise ValueError(f'search_view={self.search_view} must be < num_global_crops={G}')
        global_views, local_views = list(inputs[:G]), list(inputs[G:V])
        if self.teacher_input == 'student':
            return global_views, local_views, global_views
        return global_views, local_views, teacher_global_views(inputs, data_samples, V, T, G)

    # ------------------------------------------------------------------ loss
    def loss(self, inputs: List[torch.Tensor], data_samples: List[DataSample],
             **kwargs) -> Dict[str, torch.Tensor]:
        """Compute ``loss_dino``, ``loss_global_i`` and ``loss_search_i``.

        Args:
            inputs (list[Tensor]): V student views then T teacher views, each [B, 3, H, W].
            data_samples (list[DataSample]): B samples from :class:`PackGeometricViews`.

        Returns:
            dict[str, Tensor]: scalar losses.
        """
        global_views, local_views, teacher_views = self._split_views(inputs, data_samples)
        G, L = len(global_views), len(local_views)
        B = global_views[0].shape[0]

        s_maps_g, s_final_g = self._encode_views(self.backbone, global_views)
        if local_views:
            s_maps_l, s_final_l = self._encode_views(self.backbone, local_views)
        else:  # DINO with the two global crops only
            s_maps_l, s_final_l = [], s_final_g.new_zeros((0, ) + s_final_g.shape[1:])
        with torch.no_grad():
            t_maps_g, t_final_g = self._encode_views(self.teacher['backbone'], teacher_views)

        losses: Dict[str, torch.Tensor] = {}
        s_final = torch.cat([s_final_g, s_final_l])
        if self.training and int(self.num_iters.item()) < self.freeze_last_layer_iters:
            z = F.normalize(self.head.mlp(s_final), dim=-1)
            s_logits = F.linear(z, self.head.last_layer_weight().detach().to(z.dtype))
        else:
            s_logits = self.head(s_final)
        if self.training:
            self.num_iters.add_(1)
        s_logits = s_logits.reshape(G + L, B, -1)
        with torch.no_grad():
            t_logits = self.teacher['head'](t_final_g).reshape(G, B, -1)
        losses['loss_dino'] = self.dino_loss(s_logits, t_logits, list(range(G + L)),
                                             list(range(G)))
        # collapse diagnostics (logged, not optimised: the keys hold no 'loss')
        losses.update(collapse_log_vars(self.dino_loss, 'dino_'))

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

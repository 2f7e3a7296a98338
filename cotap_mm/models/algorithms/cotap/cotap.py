"""CoTAP: dense self-distillation with a continuous-target AP loss and an object-aware filter.

Paper: Wen et al., "Semantic Concentration for Self-Supervised Dense Representations Learning",
https://arxiv.org/abs/2509.09429.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from ...backbones.cotap_vit import foreground_mask
from ...necks.object_prototype_neck import filtered_forward, tokens_to_map
from ...utils.decoupling import DecouplingBranch, masks_from_data_samples
from ...utils.depositioning import DepositioningBranch
from ...utils.extra_rows import stack_extra_rows
from ...utils.feature_queue import FeatureQueue
from ...utils.module_builder import build_module
from ...utils.view_layout import packed_view_counts, teacher_global_views
from ..base import TeacherStudentSelfSupervisor, first_view
from .step import CoTAPStep, group_by_size, loss_enabled, source_positions
from .terms import build_terms

__all__ = ['CoTAP']

_STUDENT_KEYS = ('backbone', 'neck', 'patch_head', 'cls_head')


@MODELS.register_module()
class CoTAP(TeacherStudentSelfSupervisor):
    """CoTAP post-pretraining of a ViT: student / EMA teacher with the paper's full objective.

    Paper: `Semantic Concentration for Self-Supervised Dense Representations Learning
    <https://arxiv.org/abs/2509.09429>`_. docs/cotap.md describes every term, the data each one
    reads and how this implementation compares with the released code.

    The student is ``backbone`` (:class:`CoTAPViT`) + ``neck`` (:class:`ObjectPrototypeNeck`,
    2C-dim tokens) + ``patch_head`` / ``cls_head`` (:class:`DINOProjectionHead`); ``teacher`` is a
    ``ModuleDict`` copy with the same keys, updated by :class:`EMATeacherHook`. ``inputs`` are V
    student views (G global crops first) followed by the teacher's clean views
    (``data_samples[i].teacher_view_indices``); ``data_samples[i].crop_boxes`` [V, 4] feed
    ``loss_patch_cluster``; optional ``source``, ``neighbor_index`` and ``is_neighbor`` (from
    ``neighbor_collate``) route samples to terms and pair anchors with neighbours.

    Losses (a key is present iff its term is enabled; a term is disabled by ``None`` or
    ``loss_weight=0``): ``loss_cotap`` (ranking of patch similarities, :class:`ContinuousAPLoss`),
    ``loss_patch_cluster`` (:class:`PatchClusterLoss` on Sinkhorn codes), ``loss_cls_cluster``,
    ``loss_cls_neighbor``, ``loss_proto_entropy``, optionally ``loss_cls`` (DINO) and
    ``loss_dc`` / ``loss_depos`` (de-coupling / de-positioning, `arXiv 2303.16947
    <https://arxiv.org/abs/2303.16947>`_). Logged only: ``patch_code_entropy``,
    ``cls_code_entropy`` and, with ``loss_cls``, its collapse diagnostics.

    Args:
        backbone (dict): :class:`CoTAPViT` config.
        neck (dict): :class:`ObjectPrototypeNeck` config; ``embed_dims`` defaults to the
            backbone's.
        patch_head (dict): :class:`DINOProjectionHead` config (``in_channels`` defaults to 2C).
        cls_head (dict): same, for the CLS token.
        cotap_loss (dict, optional): Defaults to ``dict(type='ContinuousAPLoss')``.
        cls_loss (dict, optional): :class:`DINOClsLoss` config (``out_dim`` defaults to the CLS
            head's K). Defaults to None (not in the paper's objective).
        proto_loss (dict, optional): Defaults to ``dict(type='PrototypeEntropyLoss')``.
        patch_cluster_loss (dict, optional): Defaults to ``dict(type='PatchClusterLoss')``.
        cls_cluster_loss (dict, optional): Defaults to ``dict(type='ClsClusterLoss')``.
        cls_neighbor_loss (dict, optional): Defaults to ``dict(type='ClsNeighborLoss')``.
        patch_sinkhorn (dict): ``epsilon`` and ``iters`` of the patch codes. Defaults to
            ``dict(epsilon=0.05, iters=3)``.
        cls_sinkhorn (dict): same for the CLS codes. Defaults to ``dict(epsilon=0.07, iters=3)``.
        patch_queue (dict, optional): :class:`FeatureQueue` ``size`` (total over processes) and
            ``max_per_step`` of past teacher foreground patch vectors; None: no queue. Defaults
            to ``dict(size=262144, max_per_step=2048)``.
        cls_queue (dict, optional): Defaults to ``dict(size=32768, max_per_step=100)``.
        cluster_start_iter (int): first ``loss()`` call (0-based) with Sinkhorn targets.
            Defaults to 1.
        patch_codes_on (str): teacher patches the patch Sinkhorn codes: 'all' (every patch of
            the global crops) or 'foreground' (foreground patches only, zero codes elsewhere).
            Defaults to 'all'.
        cls_neighbor_views (str): student crops of ``loss_cls_neighbor``: 'global' or 'all'.
            Defaults to 'global'.
        rank_all_images (bool): with neighbour pairs (``is_neighbor`` in the data samples),
            also rank the neighbours as anchors; False ranks the anchors only. Defaults to False.
        teacher_prototypes (str): 'ema' (the teacher's prototypes follow the student's through
            the EMA hook) or 'copy' (copied into the teacher after k-means). Defaults to 'ema'.
        pool_scales (Sequence[int]): pooled grid sizes of ``loss_cotap`` (each <= the patch
            grid). Defaults to (7, 14).
        topk (int): foreground cells kept per image and scale. Defaults to 5.
        num_random (int): R, random images per anchor. Defaults to 5.
        fg_cfg (dict, optional): kwargs of :func:`foreground_mask`. Defaults to None.
        bank_size (int): prototype bank size. Defaults to 1024.
        bank_samples_per_step (int): samples enqueued per step once the bank is full (before,
            every sample of the step). Defaults to 32.
        kmeans_iters (int): k-means iterations. Defaults to 3000.
        kmeans_seed (int): k-means seed. Defaults to 0.
        partner_key (str): data-sample field holding the batch position of the partner.
            Defaults to 'neighbor_index'.
        source_key (str): data-sample field naming the sample's dataset. Defaults to 'source'.
        patch_sources (Sequence[str]): sources feeding the patch terms. Defaults to ('coco', ).
        cls_sources (Sequence[str]): sources feeding the CLS terms. Defaults to ('imagenet', ).
        bank_sources (Sequence[str], optional): sources feeding the prototype bank; None: the
            ``patch_sources``. Defaults to None.
        decoupling (dict, optional): :class:`DecouplingBranch` kwargs; None: off.
            Defaults to None.
        depositioning (dict, optional): :class:`DepositioningBranch` kwargs; None: off.
            Defaults to None.
        dense_loss (dict, optional): dense loss of ``loss_dc`` / ``loss_depos``; None reuses the
            patch-cluster codes. Defaults to None.
        rcc_key (str): data-sample field of the RCC masks used by ``decoupling``. Defaults to
            'rcc_mask'.
        data_preprocessor (dict, optional): Defaults to ``SelfSupDataPreprocessor``.
        init_cfg (dict, optional): Defaults to None.
    """
    def __init__(self,
                 backbone: dict,
                 neck: dict,
                 patch_head: dict,
                 cls_head: dict,
                 cotap_loss: Optional[dict] = dict(type='ContinuousAPLoss'),
                 cls_loss: Optional[dict] = None,
                 proto_loss: Optional[dict] = dict(type='PrototypeEntropyLoss'),
                 patch_cluster_loss: Optional[dict] = dict(type='PatchClusterLoss'),
                 cls_cluster_loss: Optional[dict] = dict(type='ClsClusterLoss'),
                 cls_neighbor_loss: Optional[dict] = dict(type='ClsNeighborLoss'),
                 patch_sinkhorn: dict = dict(epsilon=0.05, iters=3),
                 cls_sinkhorn: dict = dict(epsilon=0.07, iters=3),
                 patch_queue: Optional[dict] = dict(size=262144, max_per_step=2048),
                 cls_queue: Optional[dict] = dict(size=32768, max_per_step=100),
                 cluster_start_iter: int = 1,
                 patch_codes_on: str = 'all',
                 cls_neighbor_views: str = 'global',
                 rank_all_images: bool = False,
                 teacher_prototypes: str = 'ema',
                 pool_scales: Sequence[int] = (7, 14),
                 topk: int = 5,
                 num_random: int = 5,
                 fg_cfg: Optional[dict] = None,
                 bank_size: int = 1024,
                 bank_samples_per_step: int = 32,
                 kmeans_iters: int = 3000,
                 kmeans_seed: int = 0,
                 partner_key: str = 'neighbor_index',
                 source_key: str = 'source',
                 patch_sources: Sequence[str] = ('coco', ),
                 cls_sources: Sequence[str] = ('imagenet', ),
                 bank_sources: Optional[Sequence[str]] = None,
                 decoupling: Optional[dict] = None,
                 depositioning: Optional[dict] = None,
                 dense_loss: Optional[dict] = None,
                 rcc_key: str = 'rcc_mask',
                 data_preprocessor: Optional[Union[dict, nn.Module]] = None,
                 init_cfg: Optional[dict] = None) -> None:
        backbone = build_module(backbone, 'backbone')
        if isinstance(neck, dict):
            neck = dict(neck)
            neck.setdefault('embed_dims', backbone.embed_dims)
            neck = MODELS.build(neck)
        super().__init__(backbone=backbone, neck=neck, data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        out_ch = self.neck.out_channels
        self.patch_head = build_module(patch_head, 'patch_head', in_channels=out_ch)
        self.cls_head = build_module(cls_head, 'cls_head', in_channels=out_ch)

        if not isinstance(pool_scales, (list, tuple)) or not pool_scales or not all(
                isinstance(s, int) and s >= 1 for s in pool_scales):
            raise ValueError(f'pool_scales must be a non-empty sequence of positive ints, got '
                             f'{pool_scales!r}')
        for name, val, low in (('topk', topk, 1), ('num_random', num_random, 0),
                               ('bank_size', bank_size, 1),
                               ('bank_samples_per_step', bank_samples_per_step, 1),
                               ('kmeans_iters', kmeans_iters, 1),
                               ('cluster_start_iter', cluster_start_iter, 0)):
            if isinstance(val, bool) or not isinstance(val, int) or val < low:
                raise ValueError(f'{name} must be an int >= {low}, got {val!r}')
        if bank_size < self.neck.num_prototypes:
            raise ValueError(f'bank_size ({bank_size}) must be >= neck.num_prototypes '
                             f'({self.neck.num_prototypes}) for the k-means initialisation')
        for name, val, allowed in (('patch_codes_on', patch_codes_on, ('all', 'foreground')),
                                   ('cls_neighbor_views', cls_neighbor_views, ('global', 'all')),
                                   ('teacher_prototypes', teacher_prototypes, ('ema', 'copy'))):
            if val not in allowed:
                raise ValueError(f'{name} must be one of {allowed}, got {val!r}')
        self.patch_codes_on = patch_codes_on
        self.cls_neighbor_views = cls_neighbor_views
        self.rank_all_images = bool(rank_all_images)
        self.teacher_prototypes = teacher_prototypes
        self.pool_scales = tuple(pool_scales)
        self.topk = topk
        self.num_random = num_random
        self.fg_cfg = dict(fg_cfg or {})
        self.bank_size = bank_size
        self.kmeans_iters = kmeans_iters
        self.kmeans_seed = kmeans_seed
        self.partner_key = partner_key
        self.source_key = source_key
        self.patch_sources = self._check_sources(patch_sources, 'patch_sources')
        self.cls_sources = self._check_sources(cls_sources, 'cls_sources')
        self.bank_sources = (self.patch_sources if bank_sources is None else
                             self._check_sources(bank_sources, 'bank_sources'))
        self.cluster_start_iter = cluster_start_iter
        self._warned_sources: set = set()
        self.patch_sinkhorn = self._check_sinkhorn(patch_sinkhorn, 'patch_sinkhorn')
        self.cls_sinkhorn = self._check_sinkhorn(cls_sinkhorn, 'cls_sinkhorn')

        if isinstance(cls_loss, dict):
            cls_loss = dict(cls_loss)
            if cls_loss.get('type') in ('DINOClsLoss', 'mmpretrain.DINOClsLoss'):
                cls_loss.setdefault('out_dim', self.cls_head.num_prototypes)
        for name, cfg in (('cotap_loss', cotap_loss), ('cls_loss', cls_loss),
                          ('proto_loss', proto_loss), ('patch_cluster_loss', patch_cluster_loss),
                          ('cls_cluster_loss', cls_cluster_loss),
                          ('cls_neighbor_loss', cls_neighbor_loss)):
            setattr(self, name, MODELS.build(cfg) if isinstance(cfg, dict) else cfg)

        # de-coupling / de-positioning (arXiv 2303.16947 + ICLR-24 successor): models/utils
        self.rcc_key = rcc_key
        self.decoupling = DecouplingBranch(**decoupling) if decoupling else None
        self.depositioning = DepositioningBranch(**depositioning) if depositioning else None
        self.dense_loss = None
        if self.decoupling is not None or self.depositioning is not None:
            if dense_loss is None:
                if not loss_enabled(self.patch_cluster_loss):
                    raise ValueError('decoupling / depositioning with dense_loss=None reuse the '
                                     'codes of loss_patch_cluster, which is disabled: enable '
                                     'patch_cluster_loss or set e.g. '
                                     "dense_loss=dict(type='IBOTPatchLoss')")
            else:
                if isinstance(dense_loss, dict):
                    dense_loss = dict(dense_loss)
                    if dense_loss.get('type') in ('IBOTPatchLoss', 'mmpretrain.IBOTPatchLoss'):
                        dense_loss.setdefault('out_dim', self.patch_head.num_prototypes)
                    dense_loss = MODELS.build(dense_loss)
                if not (callable(getattr(dense_loss, 'cross_entropy', None))
                        and callable(getattr(dense_loss, 'step', None))):
                    raise TypeError('dense_loss must provide cross_entropy(student, teacher, '
                                    'weights) and step(teacher) (e.g. IBOTPatchLoss), got '
                                    f'{type(dense_loss).__name__}')
                self.dense_loss = dense_loss

        self.build_teacher(_STUDENT_KEYS)
        self.register_step_counter('loss_iter')

        K = self.neck.kernel_size
        self.proto_bank = FeatureQueue(bank_size, self.neck.embed_dims * K * K,
                                       max_per_step=bank_samples_per_step,
                                       split_across_ranks=False, fill_first=True,
                                       sorted_subset=False)
        self.patch_queue = self.cls_queue = None
        if loss_enabled(self.patch_cluster_loss) and patch_queue is not None:
            self.patch_queue = FeatureQueue(dim=self._bottleneck_dim(self.patch_head, 'patch_head'),
                                            **patch_queue)
        if (loss_enabled(self.cls_cluster_loss) or loss_enabled(self.cls_neighbor_loss)) \
                and cls_queue is not None:
            self.cls_queue = FeatureQueue(dim=self._bottleneck_dim(self.cls_head, 'cls_head'),
                                          **cls_queue)
        # every rank fills its own bank and queues: keep DDP from broadcasting rank 0's each step
        ignore = []
        for name in ('proto_bank', 'patch_queue', 'cls_queue'):
            if getattr(self, name) is not None:
                ignore += [f'{name}.{b}' for b, _ in getattr(self, name).named_buffers()]
        self._ddp_params_and_buffers_to_ignore = ignore

        self.terms = build_terms(self)

    @staticmethod
    def _check_sources(sources: Sequence[str], name: str) -> Tuple[str, ...]:
        if isinstance(sources, str) or not isinstance(sources, (list, tuple)) or not all(
                isinstance(s, str) for s in sources):
            raise ValueError(f'{name} must be a list/tuple of source names, got {sources!r}')
        return tuple(sources)

    @staticmethod
    def _check_sinkhorn(cfg: dict, name: str) -> dict:
        cfg = dict(cfg or {})
        unknown = set(cfg) - {'epsilon', 'iters'}
        if unknown:
            raise ValueError(f'{name} accepts epsilon and iters, got unknown keys '
                             f'{sorted(unknown)}')
        cfg.setdefault('epsilon', 0.05)
        cfg.setdefault('iters', 3)
        if not cfg['epsilon'] > 0 or not isinstance(cfg['iters'], int) or cfg['iters'] < 1:
            raise ValueError(f'{name} needs epsilon > 0 and an int iters >= 1, got {cfg}')
        return cfg

    @staticmethod
    def _bottleneck_dim(head: nn.Module, name: str) -> int:
        if not hasattr(head, 'last_layer_weight'):
            raise TypeError(f'{name} must be a DINOProjectionHead-like head (last_layer_weight) '
                            f'for the clustering terms, got {type(head).__name__}')
        return int(head.last_layer_weight().shape[1])


    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        """Checkpoints of earlier versions kept the prototype bank in three buffers of this
        module (``proto_bank`` [S, C, K, K], ``proto_bank_ptr``, ``proto_bank_count``); they are
        read into the :class:`FeatureQueue` ``proto_bank``."""
        old = prefix + 'proto_bank'
        if isinstance(state_dict.get(old), torch.Tensor) and prefix + 'proto_bank.queue' not in \
                state_dict:
            bank = state_dict.pop(old)
            state_dict[old + '.queue'] = bank.reshape(bank.shape[0], -1)
            for name in ('ptr', 'count'):
                if old + '_' + name in state_dict:
                    state_dict[f'{old}.{name}'] = state_dict.pop(f'{old}_{name}')
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    # ------------------------------------------------------------------ features
    def extract_feat(self, inputs: Union[torch.Tensor, List[torch.Tensor]]) -> torch.Tensor:
        """2C-dim patch features of the (student) object-aware filter.

        Args:
            inputs (Tensor | list[Tensor]): images [B, 3, H, W] (a list: its first element).

        Returns:
            Tensor: [B, 2C, h, w].
        """
        out = filtered_forward(self.backbone, self.neck, first_view(inputs))
        return tokens_to_map(out.patches, out.hw)

    # ------------------------------------------------------------------ loss
    def loss(self, inputs: List[torch.Tensor], data_samples: List[DataSample],
             **kwargs) -> Dict[str, torch.Tensor]:
        """The enabled terms of one step (see the class docstring).

        Args:
            inputs (list[Tensor]): V student views then T teacher views, each [B, 3, H, W].
            data_samples (list[DataSample]): B samples from :class:`PackGeometricViews`
                (optionally with ``source``, ``neighbor_index`` and ``is_neighbor``).

        Returns:
            dict[str, Tensor]: scalar losses of the enabled terms and the logged diagnostics.
        """
        V, T, G = packed_view_counts(inputs, data_samples, 'CoTAP')
        teacher_views = teacher_global_views(inputs, data_samples, V, T, G)
        step = CoTAPStep(
            student_views=list(inputs[:V]), data_samples=data_samples, G=G,
            B=inputs[0].shape[0],
            p_pos=self._positions(data_samples, self.patch_sources),
            c_pos=self._positions(data_samples, self.cls_sources),
            clustering=self.step_count('loss_iter') >= self.cluster_start_iter)
        terms = [t for t in self.terms if t.enabled(self)]
        for term in terms:  # k-means changes the prototypes in place: before any forward
            term.before_forward(self)

        self._encode_student(step, encode_locals=any(t.needs_local_crops for t in terms))
        with torch.no_grad():
            self._encode_teacher(step, teacher_views,
                                 foreground=any(t.needs_foreground for t in terms))
        losses: Dict[str, torch.Tensor] = {}
        for term in terms:
            losses.update(term(self, step))
        self.count_step('loss_iter')
        return losses

    def _positions(self, data_samples: List[DataSample],
                   sources: Tuple[str, ...]) -> Optional[List[int]]:
        return source_positions(data_samples, sources, self.source_key, self._warned_sources)

    def _encode_student(self, step: CoTAPStep, encode_locals: bool) -> None:
        """Global crops (+ the de-coupling / de-positioning rows of the patch sub-batch, sliced
        off after the filter), then the local crops grouped by size."""
        G, B = step.G, step.B
        views = step.student_views[:G]
        stride = self.backbone.patch_embed.projection.stride
        hw = (views[0].shape[-2] // stride[0], views[0].shape[-1] // stride[1])
        masks = None
        if self.decoupling is not None and step.bp >= 2:
            masks = masks_from_data_samples(step.samples(step.p_pos), self.rcc_key, G, hw,
                                            step.device)  # [G, bp, N]
        rows = stack_extra_rows(views, hw, self.decoupling, self.depositioning, masks,
                                step.samples(step.p_pos), step.p_idx)
        edits = {} if rows.replace is None else dict(replace=rows.replace,
                                                       donor_index=rows.donor_index)
        out = filtered_forward(self.backbone, self.neck, rows.images, **edits)
        if tuple(out.hw) != hw:
            raise ValueError(f'the global crops give a {tuple(out.hw)} patch grid, expected {hw} '
                             f'from the patch stride {tuple(stride)}')
        n = G * B
        step.tokens, step.hw = out.tokens[:n], tuple(out.hw)
        step.cls_g, step.patch_g = out.cls[:n], out.patches[:n]
        if self.decoupling is not None or self.depositioning is not None:
            step.extra, step.extra_patch = rows, out.patches[n:]
        step.cls_views = [step.cls_g.reshape(G, B, -1)]
        step.zero = step.cls_g.sum() * 0.0  # value of a term with an empty sub-batch
        if not encode_locals:
            return
        for group in group_by_size(step.student_views[G:]):
            loc = filtered_forward(self.backbone, self.neck, torch.cat(group))
            step.cls_views.append(loc.cls.reshape(len(group), B, -1))
            patches = loc.patches.reshape(len(group), B, *loc.patches.shape[1:])
            step.local_patch += [(patches[k], tuple(loc.hw)) for k in range(len(group))]

    def _encode_teacher(self, step: CoTAPStep, views: List[torch.Tensor],
                        foreground: bool) -> None:
        """Teacher filter outputs of the clean global crops and, for the patch terms, the
        foreground masks from the last block's CLS attention."""
        out = filtered_forward(self.teacher['backbone'], self.teacher['neck'], torch.cat(views))
        if tuple(out.hw) != tuple(step.hw):
            raise ValueError(f'student and teacher global views differ in grid: {step.hw} vs '
                             f'{tuple(out.hw)}')
        step.t_tokens, step.t_cls_g, step.t_patch = out.tokens, out.cls, out.patches
        if foreground:
            attn = self.teacher['backbone'].last_cls_attention(out.tokens)
            step.fg = foreground_mask(attn, step.hw, **self.fg_cfg)  # [G*B, h, w]

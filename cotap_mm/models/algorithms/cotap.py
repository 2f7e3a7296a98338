"""CoTAP: dense self-distillation with a continuous-target AP loss and an object-aware filter.

Paper: Wen et al., "Semantic Concentration for Self-Supervised Dense Representations Learning",
https://arxiv.org/abs/2509.09429 (official code: github.com/KID-7391/CoTAP).
"""
import logging
from functools import partial
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.dist import broadcast, is_main_process
from mmengine.logging import print_log
from mmpretrain.models.selfsup.base import BaseSelfSupervisor
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from ..backbones.cotap_vit import foreground_mask
from ..losses.dino_cls_loss import collapse_log_vars
from ..losses.functional.cluster_prediction import soft_cross_entropy
from ..losses.functional.sinkhorn import mean_code_entropy, sinkhorn_knopp
from ..necks.prototype_ops import pool_bank_samples
from .ddssl_ops import (DecouplingBatch, DecouplingBranch, DepositioningBatch,
                        DepositioningBranch, box_pool_tokens, forward_pre_last_with_edits,
                        masks_from_data_samples)
from .feature_queue import FeatureQueue
from .module_builder import build_module
from .pair_selection import (build_similarity_items, gather_tokens, negative_partners,
                             pool_views, random_derangements, retrieve_partners,
                             topk_foreground_indices)
from .teacher_student import TeacherStudentMixin
from .view_layout import packed_view_counts, teacher_global_views

__all__ = ['CoTAP', 'kept_code_cross_entropy', 'region_code_targets']

_STUDENT_KEYS = ('backbone', 'neck', 'patch_head', 'cls_head')
_LOSS_KEYS = ('cotap_loss', 'cls_loss', 'proto_loss', 'patch_cluster_loss', 'cls_cluster_loss',
              'cls_neighbor_loss')


def _loss_enabled(loss: Optional[nn.Module]) -> bool:
    """A term is on unless its loss is None or its ``loss_weight`` is 0 / None."""
    if loss is None:
        return False
    weight = getattr(loss, 'loss_weight', 1.0)
    return weight is not None and float(weight) != 0.0


def _head_embed(head: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised bottleneck vectors and prototype matrix of a :class:`DINOProjectionHead`:
    ``head(x) == z @ W.T``; returns ``z`` [..., D] (float32) and ``W`` [K, D] (float32)."""
    if not (hasattr(head, 'mlp') and hasattr(head, 'last_layer_weight')):
        raise TypeError(f'the clustering terms need a DINOProjectionHead-like head with `mlp` and '
                        f'`last_layer_weight()`, got {type(head).__name__}')
    z = F.normalize(head.mlp(x).float(), dim=-1)
    return z, head.last_layer_weight().float()


def kept_code_cross_entropy(student_scores: torch.Tensor, codes: torch.Tensor,
                            weights: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Patch-cluster cross-entropy of student scores against teacher codes on weighted tokens.

    ``mean over tokens t with weights[t] and codes[t] != 0 of
    -sum_k codes[t, k] log softmax(student_scores[t] / T)_k`` (:func:`soft_cross_entropy`);
    codes that are all zero (teacher background cells, regions without enough foreground) do
    not count. 0, still in the graph, when no token counts.

    Args:
        student_scores (Tensor): [..., K] student patch-head scores.
        codes (Tensor): [..., K] teacher codes (rows sum to 1 or are all zero; detached here).
        weights (Tensor): [...] bool or float, e.g. the kept tokens of the de-coupling rows.
        temperature (float): student temperature. Defaults to 0.1.

    Returns:
        Tensor: float32 scalar.
    """
    if tuple(weights.shape) != tuple(student_scores.shape[:-1]):
        raise ValueError(f'weights must be {tuple(student_scores.shape[:-1])} (scores without '
                         f'the class dim), got {tuple(weights.shape)}')
    valid = weights.detach().float() * (codes.detach().float().sum(dim=-1) > 1e-6).float()
    return soft_cross_entropy(student_scores, codes, temperature, valid)


def region_code_targets(codes: torch.Tensor, fg: torch.Tensor, hw: Sequence[int],
                        boxes: torch.Tensor, fg_threshold: float = 0.5) -> torch.Tensor:
    """Code target of a box region, as :class:`PatchClusterLoss` pools a cell.

    The codes and the foreground mask are box-pooled (:func:`box_pool_tokens`); the pooled codes
    are renormalised to sum 1 (with zero background codes: the mean code of the region's
    foreground patches); regions whose foreground fraction is below ``fg_threshold`` (or
    without code mass) get an all-zero target, i.e. no loss (:func:`kept_code_cross_entropy`).

    Args:
        codes (Tensor): [R, N, K] per-patch codes (zero on background), N = h * w.
        fg (Tensor): [R, N] bool or float foreground mask.
        hw (Sequence[int]): the patch grid (h, w).
        boxes (Tensor): [R, 4] ``(x1, y1, x2, y2)`` in patch units.
        fg_threshold (float): minimal foreground fraction. Defaults to 0.5.

    Returns:
        Tensor: [R, K] float32 targets (rows sum to 1 or are zero).
    """
    if fg.shape != codes.shape[:2]:
        raise ValueError(f'fg must be [R, N] = {tuple(codes.shape[:2])}, got {tuple(fg.shape)}')
    pooled = box_pool_tokens(torch.cat([codes.float(), fg.float()[..., None]], dim=-1), hw,
                             boxes)
    target, frac = pooled[:, :-1], pooled[:, -1]
    mass = target.sum(dim=-1, keepdim=True)
    keep = (frac >= fg_threshold) & (mass[:, 0] > 1e-6)
    return target / mass.clamp_min(1e-12) * keep[:, None].float()


class _DDSSLRows(NamedTuple):
    """Student rows of the de-coupling / de-positioning options (patch sub-batch coordinates).

    dc: the :class:`DecouplingBatch` built on the patch sub-batch (None: no de-coupling rows).
    dc_patch: [G, E, N, 2C] filter outputs of the de-coupling rows (None without rows).
    depos: (view g, :class:`DepositioningBatch`, [K, N, 2C] filter outputs) per view.
    """
    dc: Optional[DecouplingBatch]
    dc_patch: Optional[torch.Tensor]
    depos: List[Tuple[int, DepositioningBatch, torch.Tensor]]


@MODELS.register_module()
class CoTAP(TeacherStudentMixin, BaseSelfSupervisor):
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
        backbone = MODELS.build(backbone) if isinstance(backbone, dict) else backbone
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
        self.bank_samples_per_step = bank_samples_per_step
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

        # de-coupling / de-positioning (arXiv 2303.16947 + ICLR-24 successor): ddssl_ops
        self.rcc_key = rcc_key
        self.decoupling = DecouplingBranch(**decoupling) if decoupling else None
        self.depositioning = DepositioningBranch(**depositioning) if depositioning else None
        self.dense_loss = None
        if self.decoupling is not None or self.depositioning is not None:
            if dense_loss is None:
                if not _loss_enabled(self.patch_cluster_loss):
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

        self._init_teacher(_STUDENT_KEYS)
        self.register_buffer('loss_iter', torch.tensor(0, dtype=torch.long))

        K = self.neck.kernel_size
        self.register_buffer('proto_bank', torch.zeros(bank_size, self.neck.embed_dims, K, K))
        self.register_buffer('proto_bank_ptr', torch.tensor(0, dtype=torch.long))
        self.register_buffer('proto_bank_count', torch.tensor(0, dtype=torch.long))

        self.patch_queue = self.cls_queue = None
        if _loss_enabled(self.patch_cluster_loss) and patch_queue is not None:
            self.patch_queue = FeatureQueue(dim=self._bottleneck_dim(self.patch_head, 'patch_head'),
                                            **patch_queue)
        if (_loss_enabled(self.cls_cluster_loss) or _loss_enabled(self.cls_neighbor_loss)) \
                and cls_queue is not None:
            self.cls_queue = FeatureQueue(dim=self._bottleneck_dim(self.cls_head, 'cls_head'),
                                          **cls_queue)
        # every rank fills its own bank and queues: keep DDP from broadcasting rank 0's each step
        ignore = ['proto_bank', 'proto_bank_ptr', 'proto_bank_count']
        for name in ('patch_queue', 'cls_queue'):
            if getattr(self, name) is not None:
                ignore += [f'{name}.{b}' for b, _ in getattr(self, name).named_buffers()]
        self._ddp_params_and_buffers_to_ignore = ignore

    # ------------------------------------------------------------------ config checks
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

    # ------------------------------------------------------------------ features
    @staticmethod
    def _encode(mods: nn.ModuleDict,
                x: torch.Tensor
                ) -> Tuple[torch.Tensor, Tuple[int, int], torch.Tensor, torch.Tensor]:
        tokens, hw = mods['backbone'].forward_pre_last(x)
        cls, patches = mods['neck'](tokens, hw, mods['backbone'].last_block)
        return tokens, hw, cls, patches

    def extract_feat(self, inputs: Union[torch.Tensor, List[torch.Tensor]]) -> torch.Tensor:
        """2C-dim patch features of the (student) object-aware filter.

        Args:
            inputs (Tensor | list[Tensor]): images [B, 3, H, W] (a list: its first element).

        Returns:
            Tensor: [B, 2C, h, w].
        """
        x = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        _, (h, w), _, patches = self._encode(self.student, x)
        B, N, D = patches.shape
        return patches.transpose(1, 2).reshape(B, D, h, w)

    # ------------------------------------------------------------------ helpers
    def _source_index(self, data_samples: List[DataSample], sources: Tuple[str, ...],
                      device: torch.device) -> Optional[torch.Tensor]:
        """Batch positions of the samples of ``sources``; None when no sample has a source."""
        has = [self.source_key in ds for ds in data_samples]
        if not any(has):
            return None
        if not all(has):
            raise ValueError(f'either all or no data samples must carry {self.source_key!r}; '
                             f'missing at batch positions '
                             f'{[i for i, h in enumerate(has) if not h]}')
        idx = [i for i, ds in enumerate(data_samples) if ds.get(self.source_key) in sources]
        if not idx and sources not in self._warned_sources:
            self._warned_sources.add(sources)
            found = sorted({str(ds.get(self.source_key)) for ds in data_samples})
            print_log(f'CoTAP: no sample of the sources {sources} in a batch of sources {found}: '
                      f'the terms fed by {sources} are 0 (set model.patch_sources / cls_sources / '
                      f'bank_sources to match the data, e.g. cls_sources={tuple(found)} for '
                      f'COCO-only data with neighbor_collate)', logger='current',
                      level=logging.WARNING)
        return torch.as_tensor(idx, dtype=torch.long, device=device)

    def _partners(self, embeddings: torch.Tensor,
                  data_samples: Optional[List[DataSample]],
                  index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Partner positions within the sub-batch ``index`` (None: the whole batch)."""
        b = embeddings.shape[0]
        full = len(data_samples) if data_samples else b
        pos = list(range(full)) if index is None else [int(i) for i in index.tolist()]
        sub = [data_samples[i] for i in pos] if data_samples else []
        if not sub or not all(self.partner_key in ds for ds in sub):
            return retrieve_partners(embeddings)
        raw = [int(ds.get(self.partner_key)) for ds in sub]
        if any(r < -1 or r >= full for r in raw):
            raise ValueError(f'data_sample.{self.partner_key} must be batch positions in '
                             f'[0, {full}) or -1 (no partner), got {raw}')
        where = {p: k for k, p in enumerate(pos)}
        outside = [r for r in raw if r >= 0 and r not in where]
        if outside:
            raise ValueError(f'data_sample.{self.partner_key} points to batch positions '
                             f'{outside} outside the sub-batch {pos} of the same sources '
                             f'({self.source_key!r}); partners must share the source')
        if any(where.get(r) == k for k, r in enumerate(raw)):
            raise ValueError(f'data_sample.{self.partner_key} must differ from the sample '
                             f'itself, got {raw} for batch positions {pos}')
        idx = [where.get(r, -1) for r in raw]
        if -1 in idx:  # samples without a partner (neighbor_index -1): in-batch retrieval
            found = retrieve_partners(embeddings).tolist()
            idx = [found[k] if i < 0 else i for k, i in enumerate(idx)]
        return torch.as_tensor(idx, dtype=torch.long, device=embeddings.device)

    @torch.no_grad()
    def _update_bank(self, tokens_pre_last: torch.Tensor, hw: Tuple[int, int]) -> None:
        if tokens_pre_last.shape[0] == 0:
            return
        samples = pool_bank_samples(tokens_pre_last[:, 1:].detach().float(), hw,
                                    self.neck.kernel_size)
        count = int(self.proto_bank_count.item())
        # every sample of the step until the bank is full, then bank_samples_per_step
        per_step = self.bank_size - count if count < self.bank_size else self.bank_samples_per_step
        n = min(samples.shape[0], per_step, self.bank_size)
        if n < samples.shape[0]:
            samples = samples[torch.randperm(samples.shape[0], device=samples.device)[:n]]
        ptr = int(self.proto_bank_ptr.item())
        idx = (torch.arange(n, device=samples.device) + ptr) % self.bank_size
        self.proto_bank[idx] = samples.to(self.proto_bank.dtype)
        self.proto_bank_ptr.fill_((ptr + n) % self.bank_size)
        self.proto_bank_count.fill_(min(count + n, self.bank_size))

    @torch.no_grad()
    def _maybe_init_prototypes(self) -> None:
        if bool(self.neck.prototypes_initialized.item()):
            return
        if int(self.proto_bank_count.item()) < self.bank_size:
            return
        with torch.autocast(device_type=self.proto_bank.device.type, enabled=False):
            if is_main_process():
                self.neck.init_prototypes_(self.proto_bank.float(), iters=self.kmeans_iters,
                                           seed=self.kmeans_seed)
        broadcast(self.neck.prototypes.data, 0)
        self.neck.prototypes_initialized.fill_(True)
        if self.teacher_prototypes == 'copy':
            self.teacher['neck'].load_prototypes_(self.neck.prototypes.data)

    @torch.no_grad()
    def _sinkhorn_codes(self, z: torch.Tensor, weight: torch.Tensor,
                        queue: Optional[FeatureQueue], cfg: dict) -> torch.Tensor:
        """Codes [n, K] of the rows of ``z`` [n, D], Sinkhorn together with ``queue``'s entries."""
        z = z.float()
        past = queue.features().to(z) if queue is not None else z.new_zeros((0, z.shape[1]))
        with torch.autocast(device_type=z.device.type, enabled=False):
            scores = torch.cat([past, z]) @ weight.float().t()
        return sinkhorn_knopp(scores, cfg['epsilon'], cfg['iters'])[past.shape[0]:]

    @staticmethod
    def _split_batch(x: torch.Tensor, n: int, B: int,
                     index: Optional[torch.Tensor]) -> torch.Tensor:
        """View-major [n*B, ...] -> [n, b, ...] restricted to the batch positions ``index``."""
        x = x.reshape(n, B, *x.shape[1:])
        return x if index is None else x[:, index]

    def _split_views(self, inputs: List[torch.Tensor], data_samples: List[DataSample]
                     ) -> Tuple[List[torch.Tensor], List[torch.Tensor], int]:
        """The V student views, the teacher's clean view of each global crop, and G."""
        V, T, G = packed_view_counts(inputs, data_samples, 'CoTAP')
        return inputs[:V], teacher_global_views(inputs, data_samples, V, T, G), G

    @staticmethod
    def _crop_geometry(samples: List[DataSample], V: int, device: torch.device
                       ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if not samples:
            return torch.zeros(0, V, 4, device=device), None
        if not all('crop_boxes' in ds for ds in samples):
            raise ValueError('loss_patch_cluster needs data_sample.crop_boxes [V, 4] (original-'
                             'image boxes of the crops, from GeometricMultiView + '
                             'PackGeometricViews); disable the term with '
                             'patch_cluster_loss=None otherwise')
        boxes = torch.stack([torch.as_tensor(ds.crop_boxes, dtype=torch.float32)
                             for ds in samples]).to(device)
        if boxes.shape[1:] != (V, 4):
            raise ValueError(f'data_sample.crop_boxes must be [V, 4] = [{V}, 4], got '
                             f'{tuple(boxes.shape[1:])}')
        flips = None
        if all('crop_flips' in ds for ds in samples):
            flips = torch.stack([torch.as_tensor(ds.crop_flips, dtype=torch.bool)
                                 for ds in samples]).to(device)
        return boxes, flips

    # ------------------------------------------------------------------ loss
    def loss(self, inputs: List[torch.Tensor], data_samples: List[DataSample],
             **kwargs) -> Dict[str, torch.Tensor]:
        """Compute the enabled terms (see the class docstring).

        Args:
            inputs (list[Tensor]): V student views then T teacher views, each [B, 3, H, W].
            data_samples (list[DataSample]): B samples from :class:`PackGeometricViews`
                (optionally with ``source`` and ``neighbor_index``).

        Returns:
            dict[str, Tensor]: scalar losses of the enabled terms.
        """
        student_views, teacher_views, G = self._split_views(inputs, data_samples)
        V = len(student_views)
        B = student_views[0].shape[0]
        dev = student_views[0].device
        on = {k: _loss_enabled(getattr(self, k)) for k in _LOSS_KEYS}
        use_patch = on['cotap_loss'] or on['patch_cluster_loss']
        use_codes = on['cls_cluster_loss'] or on['cls_neighbor_loss']
        use_cls = on['cls_loss'] or use_codes
        clustering = int(self.loss_iter.item()) >= self.cluster_start_iter
        p_idx = self._source_index(data_samples, self.patch_sources, dev)
        c_idx = self._source_index(data_samples, self.cls_sources, dev)
        bp = B if p_idx is None else int(p_idx.numel())
        bc = B if c_idx is None else int(c_idx.numel())
        losses: Dict[str, torch.Tensor] = {}
        if on['proto_loss']:
            # before any forward: k-means changes the prototypes in place
            self._maybe_init_prototypes()

        # ---- student: global crops (+ de-coupling / de-positioning rows, sliced off), then
        # local crops grouped by size
        s_tokens, hw, s_cls_g, s_patch_g, ddssl = self._encode_student_globals(
            student_views[:G], data_samples, p_idx)
        s_cls_views = [s_cls_g.reshape(G, B, -1)]  # [n, B, 2C] per group
        s_local_patch: List[Tuple[torch.Tensor, Tuple[int, int]]] = []  # [B, N_l, 2C] per crop
        if V > G and (use_cls or on['patch_cluster_loss']):
            groups: List[List[torch.Tensor]] = []
            for v in student_views[G:]:
                if groups and groups[-1][0].shape[-2:] == v.shape[-2:]:
                    groups[-1].append(v)
                else:
                    groups.append([v])
            for grp in groups:
                tok, hw_l = self.backbone.forward_pre_last(torch.cat(grp))
                cls_l, patch_l = self.neck(tok, hw_l, self.backbone.last_block)
                s_cls_views.append(cls_l.reshape(len(grp), B, -1))
                patch_l = patch_l.reshape(len(grp), B, *patch_l.shape[1:])
                s_local_patch += [(patch_l[k], tuple(hw_l)) for k in range(len(grp))]
        zero = s_cls_g.sum() * 0.0  # value of a term with an empty sub-batch

        # ---- teacher (global crops)
        with torch.no_grad():
            t_tokens, t_hw, t_cls_g, t_patch = self._encode(self.teacher, torch.cat(teacher_views))
            if tuple(t_hw) != tuple(hw):
                raise ValueError(f'student and teacher global views differ in grid: {hw} vs {t_hw}')
            fg = None
            if use_patch:
                attn = self.teacher['backbone'].last_cls_attention(t_tokens)
                fg = foreground_mask(attn, hw, **self.fg_cfg)  # [G*B, h, w]

        # ---- patch terms
        patch_codes = None  # [G, bp, K, h, w] teacher codes of loss_patch_cluster
        if use_patch:
            h, w = int(hw[0]), int(hw[1])
            s_scores = self.patch_head(self._split_batch(s_patch_g, G, B, p_idx))  # [G,bp,N,K]
            with torch.no_grad():
                # teacher head = (normalised bottleneck z) @ (prototypes W)^T
                t_z, t_w = _head_embed(self.teacher['patch_head'],
                                       self._split_batch(t_patch, G, B, p_idx))  # [G,bp,N,D]
                fg_p = self._split_batch(fg, G, B, p_idx)  # [G, bp, h, w]
            if on['cotap_loss']:
                if bp == 0:
                    losses['loss_cotap'] = zero
                else:
                    with torch.no_grad():
                        t_scores = t_z @ t_w.t()
                        emb = self._split_batch(t_cls_g, G, B, p_idx).float().mean(dim=0)
                        partner = self._partners(emb, data_samples, p_idx)
                        anchors = self._ranking_anchors(data_samples, p_idx, dev)
                    losses['loss_cotap'] = self._cotap_term(
                        s_scores.flatten(0, 1), t_scores.flatten(0, 1), fg_p.flatten(0, 1),
                        partner, anchors, (h, w), G, bp)
            if on['patch_cluster_loss']:
                losses['loss_patch_cluster'], patch_codes = self._patch_cluster_term(
                    s_scores, s_local_patch, t_z, t_w, fg_p, (h, w), student_views,
                    data_samples, p_idx, clustering, zero)
                if patch_codes is not None and self.training:  # logged, not summed
                    losses['patch_code_entropy'] = mean_code_entropy(patch_codes, dim=2)

        # ---- de-coupling / de-positioning terms (patch sub-batch)
        if ddssl is not None:
            losses.update(self._ddssl_terms(ddssl, t_patch, patch_codes, fg, hw, G, B, p_idx,
                                            zero))

        # ---- CLS terms
        if use_cls:
            s_cls_all = torch.cat(s_cls_views)  # [V', B, 2C]
            Vc = s_cls_all.shape[0]
            s_logits = self.cls_head(s_cls_all if c_idx is None else s_cls_all[:, c_idx])
            with torch.no_grad():
                t_cls_c = self._split_batch(t_cls_g, G, B, c_idx)  # [G, bc, 2C]
            if on['cls_loss']:
                if bc == 0:
                    losses['loss_cls'] = zero
                else:
                    with torch.no_grad():
                        t_logits = self.teacher['cls_head'](t_cls_c)
                    losses['loss_cls'] = self.cls_loss(s_logits, t_logits, list(range(Vc)),
                                                       list(range(G)))
                    losses.update(collapse_log_vars(self.cls_loss, 'cls_'))  # logged only
            if use_codes:
                codes = None
                with torch.no_grad():
                    z, weight = _head_embed(self.teacher['cls_head'], t_cls_c)  # [G, bc, D]
                    flat = z.reshape(-1, z.shape[-1])
                    if clustering:
                        codes = self._sinkhorn_codes(flat, weight, self.cls_queue,
                                                     self.cls_sinkhorn).reshape(
                                                         G, bc, weight.shape[0])
                    if self.cls_queue is not None:
                        self.cls_queue.enqueue(flat)
                if codes is not None and self.training:  # logged, not summed
                    losses['cls_code_entropy'] = mean_code_entropy(codes)
                if on['cls_cluster_loss']:
                    losses['loss_cls_cluster'] = (
                        self.cls_cluster_loss(s_logits, codes, list(range(Vc)), list(range(G)))
                        if codes is not None and bc > 0 else zero + s_logits.sum() * 0.0)
                if on['cls_neighbor_loss']:
                    if codes is not None and bc > 0:
                        with torch.no_grad():
                            partner = self._partners(t_cls_c.float().mean(dim=0), data_samples,
                                                     c_idx)
                        s_nb = s_logits[:G] if self.cls_neighbor_views == 'global' else s_logits
                        losses['loss_cls_neighbor'] = self.cls_neighbor_loss(s_nb, codes, partner)
                    else:
                        losses['loss_cls_neighbor'] = zero + s_logits.sum() * 0.0

        # ---- prototype bank + entropy
        if on['proto_loss']:
            b_idx = self._source_index(data_samples, self.bank_sources, dev)
            tok = self._split_batch(s_tokens, G, B, b_idx)
            self._update_bank(tok.reshape(-1, *tok.shape[2:]), hw)
            protos = self.neck.prototypes
            if bool(self.neck.prototypes_initialized.item()):
                with torch.autocast(device_type=protos.device.type, enabled=False):
                    losses['loss_proto_entropy'] = self.proto_loss(protos.float(),
                                                                   self.proto_bank.float())
            else:
                losses['loss_proto_entropy'] = protos.sum() * 0.0
        self.loss_iter.add_(1)
        return losses

    # ------------------------------------------------------------------ de-coupling options
    def _encode_student_globals(self, views: List[torch.Tensor], data_samples: List[DataSample],
                                p_idx: Optional[torch.Tensor]
                                ) -> Tuple[torch.Tensor, Tuple[int, int], torch.Tensor,
                                           torch.Tensor, Optional[_DDSSLRows]]:
        """:meth:`_encode` of the G global crops (view-major rows [G*B, ...]) and, with the
        de-coupling / de-positioning options, of their extra rows.

        The extra rows are built from the patch sub-batch ``p_idx`` only (images, donors, RCC
        masks, boxes), appended after the G*B normal rows, run through the backbone (tokens
        substituted after the embedding, :func:`forward_pre_last_with_edits`) and the filter
        in the same batch, and returned separately as :class:`_DDSSLRows`.

        Returns:
            tuple: tokens entering the last block [G*B, 1+N, C], hw, CLS [G*B, 2C], patches
            [G*B, N, 2C] (normal rows only) and the extra rows (None with both options off).
        """
        x = torch.cat(views)
        if self.decoupling is None and self.depositioning is None:
            return (*self._encode(self.student, x), None)
        G, B, dev = len(views), views[0].shape[0], x.device
        stride = self.backbone.patch_embed.projection.stride
        h, w = views[0].shape[-2] // stride[0], views[0].shape[-1] // stride[1]
        N = h * w
        pos = torch.arange(B, device=dev) if p_idx is None else p_idx.to(dev)
        sub = views if p_idx is None else [v[pos] for v in views]
        samples = [data_samples[i] for i in pos.tolist()]
        bp = len(samples)
        rows, replace = [x], [torch.zeros(G * B, N, dtype=torch.bool, device=dev)]
        donors = [torch.arange(G * B, device=dev)]
        dc, E = None, 0
        if self.decoupling is not None and bp >= 2:
            masks = masks_from_data_samples(samples, self.rcc_key, G, (h, w), dev)  # [G, bp, N]
            dc = self.decoupling.build(sub, masks)
            E = dc.num_extra
            if E:
                n = G * bp
                d = dc.donor_index[n:]  # rows g * bp + b of the sub-batch -> g * B + pos[b]
                rows.append(dc.images[n:])
                replace.append(dc.replace[n:])
                donors.append(torch.div(d, bp, rounding_mode='floor') * B + pos[d % bp])
        placed: List[Tuple[int, int, DepositioningBatch]] = []
        off = G * (B + E)
        if self.depositioning is not None and bp >= 2:
            for g in range(G):
                dp = self.depositioning.build(sub[g], (h, w), g, samples)
                if dp is None:
                    continue
                K = dp.images.shape[0]
                placed.append((g, off, dp))
                rows.append(dp.images)
                replace.append(torch.zeros(K, N, dtype=torch.bool, device=dev))
                donors.append(torch.arange(off, off + K, device=dev))
                off += K
        tok, hw = forward_pre_last_with_edits(self.backbone, torch.cat(rows),
                                              replace=torch.cat(replace),
                                              donor_index=torch.cat(donors))
        if tuple(hw) != (h, w):
            raise ValueError(f'the global crops give a {tuple(hw)} patch grid, expected {(h, w)} '
                             f'from the patch stride {tuple(stride)}')
        cls, patches = self.neck(tok, hw, self.backbone.last_block)
        n = G * B
        dc_patch = patches[n:n + G * E].reshape(G, E, N, -1) if E else None
        depos = [(g, dp, patches[o:o + dp.images.shape[0]]) for g, o, dp in placed]
        extra = _DDSSLRows(dc if E else None, dc_patch, depos)
        return tok[:n], hw, cls[:n], patches[:n], extra

    def _ddssl_terms(self, rows: _DDSSLRows, t_patch: torch.Tensor,
                     codes: Optional[torch.Tensor], fg: Optional[torch.Tensor],
                     hw: Tuple[int, int], G: int, B: int, p_idx: Optional[torch.Tensor],
                     zero: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``loss_dc`` / ``loss_depos`` (see the class docstring).

        Args:
            rows (_DDSSLRows): the extra student rows.
            t_patch (Tensor): teacher filter outputs of the global crops [G*B, N, 2C].
            codes (Tensor, optional): ``loss_patch_cluster``'s codes [G, bp, K, h, w].
            fg (Tensor, optional): teacher foreground masks [G*B, h, w].
            hw, G, B, p_idx, zero: grid, views, batch size, patch sub-batch, a graph zero.
        """
        N = int(hw[0]) * int(hw[1])
        dc, dc_patch, depos = rows
        s_dc = self.patch_head(dc_patch) if dc_patch is not None else None  # [G, E, N, K]
        out: Dict[str, torch.Tensor] = {}
        if self.dense_loss is None:  # CoTAP's own target: the patch-cluster codes
            fn = partial(kept_code_cross_entropy,
                         temperature=float(getattr(self.patch_cluster_loss, 'student_temp', 0.1)))
            with torch.no_grad():
                codes_t = None if codes is None else codes.permute(0, 1, 3, 4, 2).reshape(
                    G, codes.shape[1], N, codes.shape[2])  # [G, bp, N, K]
                if codes_t is not None and self.patch_codes_on == 'all':
                    # these terms train foreground tokens only: zero codes on the background
                    fg_t = self._split_batch(fg, G, B, p_idx).reshape(G, -1, N, 1)
                    codes_t = codes_t * fg_t.to(codes_t.dtype)
            if self.decoupling is not None:
                if s_dc is None:
                    out['loss_dc'] = zero
                elif codes_t is None:
                    out['loss_dc'] = zero + s_dc.sum() * 0.0
                else:
                    out['loss_dc'] = self.decoupling.loss(fn, s_dc, codes_t, dc) + zero
            if self.depositioning is not None:
                if not depos:
                    out['loss_depos'] = zero
                else:
                    s_reg = torch.stack([box_pool_tokens(self.patch_head(p), hw, dp.dst_boxes)
                                         for _, dp, p in depos])  # [G', K, K_proto]
                    if codes_t is None:
                        out['loss_depos'] = zero + s_reg.sum() * 0.0
                    else:
                        thr = float(getattr(self.patch_cluster_loss, 'fg_threshold', 0.5))
                        with torch.no_grad():
                            fg_p = self._split_batch(fg, G, B, p_idx).reshape(G, -1, N)
                            t_reg = torch.stack([
                                region_code_targets(codes_t[g, dp.source_index],
                                                    fg_p[g, dp.source_index], hw, dp.src_boxes,
                                                    thr) for g, dp, _ in depos])
                        out['loss_depos'] = self.depositioning.loss(fn, s_reg, t_reg) + zero
            return out

        # dense_loss given (e.g. IBOTPatchLoss): teacher vs student patch-head outputs
        with torch.no_grad():
            t_patch_p = self._split_batch(t_patch, G, B, p_idx)  # [G, bp, N, 2C]
            t_scores = self.teacher['patch_head'](t_patch_p)  # [G, bp, N, K]
        if self.decoupling is not None:
            out['loss_dc'] = zero if s_dc is None else (
                self.decoupling.loss(self.dense_loss.cross_entropy, s_dc, t_scores, dc) + zero)
        if self.depositioning is not None:
            if not depos:
                out['loss_depos'] = zero
            else:
                s_reg = torch.stack([box_pool_tokens(p, hw, dp.dst_boxes) for _, dp, p in depos])
                with torch.no_grad():
                    t_reg = torch.stack([box_pool_tokens(t_patch_p[g, dp.source_index], hw,
                                                         dp.src_boxes) for g, dp, _ in depos])
                    t_reg = self.teacher['patch_head'](t_reg)
                out['loss_depos'] = self.depositioning.loss(
                    self.dense_loss.cross_entropy, self.patch_head(s_reg), t_reg) + zero
        if t_scores.numel():
            self.dense_loss.step(t_scores)
        return out

    def _patch_cluster_term(self, s_scores: torch.Tensor,
                            s_local_patch: List[Tuple[torch.Tensor, Tuple[int, int]]],
                            t_z: torch.Tensor, t_w: torch.Tensor, fg_p: torch.Tensor,
                            hw: Tuple[int, int],
                            student_views: List[torch.Tensor], data_samples: List[DataSample],
                            p_idx: Optional[torch.Tensor], clustering: bool,
                            zero: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``loss_patch_cluster`` and the teacher codes [G, bp, K, h, w] (None before
        ``cluster_start_iter``)."""
        G, bp, N, K = s_scores.shape
        h, w = hw
        V = len(student_views)
        dev = s_scores.device

        def to_map(x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:  # [b, N, K] -> map
            return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], grid[0], grid[1])

        s_maps = [to_map(s_scores[g], (h, w)) for g in range(G)]
        for patch_l, hw_l in s_local_patch:
            sel = patch_l if p_idx is None else patch_l[p_idx]
            s_maps.append(to_map(self.patch_head(sel), hw_l))
        if len(s_maps) != V:
            raise RuntimeError(f'expected {V} student patch maps, got {len(s_maps)}')
        with torch.no_grad():
            flat = t_z.reshape(-1, t_z.shape[-1])  # teacher bottleneck vectors [G*bp*N, D]
            is_fg = fg_p.reshape(-1).bool()
            # the queue keeps foreground vectors only (boolean indexing syncs: only when needed)
            foreground = (flat[is_fg] if self.patch_queue is not None
                          or self.patch_codes_on == 'foreground' else None)
            codes = None
            if clustering:
                if self.patch_codes_on == 'all':
                    codes = self._sinkhorn_codes(flat, t_w, self.patch_queue, self.patch_sinkhorn)
                else:  # zero codes on the background
                    codes = flat.new_zeros((flat.shape[0], K))
                    codes[is_fg] = self._sinkhorn_codes(foreground, t_w, self.patch_queue,
                                                        self.patch_sinkhorn)
                codes = codes.reshape(G, bp, h, w, K).permute(0, 1, 4, 2, 3)
            if self.patch_queue is not None:
                self.patch_queue.enqueue(foreground)
        dummy = zero + sum(m.sum() for m in s_maps) * 0.0
        if codes is None or bp == 0:
            return dummy, codes
        samples = data_samples if p_idx is None else [data_samples[i] for i in p_idx.tolist()]
        boxes, flips = self._crop_geometry(samples, V, dev)
        sizes = [tuple(v.shape[-2:]) for v in student_views]
        return (self.patch_cluster_loss(s_maps, codes, fg_p.float(), boxes, sizes, flips) + dummy,
                codes)

    def _ranking_anchors(self, data_samples: List[DataSample], index: Optional[torch.Tensor],
                         device: torch.device) -> Optional[torch.Tensor]:
        """Sub-batch positions of the images ranked as anchors by ``loss_cotap``: those that are
        not a loaded neighbour (``is_neighbor``) unless ``rank_all_images``; None: every image."""
        if self.rank_all_images:
            return None
        pos = range(len(data_samples)) if index is None else index.tolist()
        flags = [bool(data_samples[i].get('is_neighbor', False)) for i in pos]
        if not any(flags):
            return None
        return torch.as_tensor([k for k, f in enumerate(flags) if not f], dtype=torch.long,
                               device=device)

    def _cotap_term(self, s_scores: torch.Tensor, t_scores: torch.Tensor, fg: torch.Tensor,
                    partner: torch.Tensor, anchors: Optional[torch.Tensor],
                    hw: Tuple[int, int], G: int, B: int) -> torch.Tensor:
        h, w = int(hw[0]), int(hw[1])
        for ks in self.pool_scales:
            if ks > min(h, w):
                raise ValueError(f'pool_scales {self.pool_scales} must not exceed the patch grid '
                                 f'{(h, w)} of the global crops')
            if self.topk > G * ks * ks:
                raise ValueError(f'topk={self.topk} exceeds the {G * ks * ks} pooled cells at '
                                 f'scale {ks}')
        A = B if anchors is None else int(anchors.numel())
        if A < 1:
            raise ValueError('loss_cotap found no anchor in the patch sub-batch (every sample is a '
                             'loaded neighbour): check the data samples\' is_neighbor')
        with torch.no_grad():
            if A == 1:  # no other anchor: its own partner, as the release's permutation gives
                perms = torch.zeros(self.num_random, 1, dtype=torch.long, device=partner.device)
            else:
                perms = random_derangements(A, self.num_random, device=partner.device)
            negatives = negative_partners(partner, perms, anchors)

        def to_maps(x: torch.Tensor) -> torch.Tensor:  # [G*B, N, D] -> [B, G, D, h, w]
            D = x.shape[-1]
            return x.reshape(G, B, h, w, D).permute(1, 0, 4, 2, 3)

        s_maps = to_maps(s_scores.float())
        t_maps = to_maps(t_scores.float())
        m_maps = to_maps(fg.float().reshape(G * B, h * w, 1))
        terms = []
        for ks in self.pool_scales:
            idx = topk_foreground_indices(pool_views(m_maps, ks)[..., 0], self.topk)
            s_tok = gather_tokens(pool_views(s_maps, ks), idx)
            with torch.no_grad():
                t_tok = gather_tokens(pool_views(t_maps, ks), idx)
                t_sim, is_random = build_similarity_items(t_tok, partner, negatives, anchors)
            s_sim, _ = build_similarity_items(s_tok, partner, negatives, anchors)
            terms.append(self.cotap_loss(s_sim, t_sim, is_random))
        return torch.stack(terms).mean()

"""CoTAP: dense self-distillation with a continuous-target AP loss and an object-aware filter.

Paper: Wen et al., "Semantic Concentration for Self-Supervised Dense Representations Learning",
https://arxiv.org/abs/2509.09429 (official code: github.com/KID-7391/CoTAP).
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.dist import broadcast, is_main_process
from mmpretrain.models.selfsup.base import BaseSelfSupervisor
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from ..backbones.cotap_vit import foreground_mask
from ..necks.prototype_ops import pool_bank_samples
from .pair_selection import (build_similarity_items, gather_tokens, negative_partners,
                             pool_views, random_derangements, retrieve_partners,
                             topk_foreground_indices)

__all__ = ['CoTAP']

_STUDENT_KEYS = ('backbone', 'neck', 'patch_head', 'cls_head')


def _loss_enabled(loss: Optional[nn.Module]) -> bool:
    return loss is not None and float(getattr(loss, 'loss_weight', 1.0)) != 0.0


@MODELS.register_module()
class CoTAP(BaseSelfSupervisor):
    """CoTAP post-pretraining of a ViT (student / EMA teacher).

    Paper: `Semantic Concentration for Self-Supervised Dense Representations Learning
    <https://arxiv.org/abs/2509.09429>`_. Design notes: METHOD_cotap §1-§3, §10.

    **Modules.** The student is ``backbone`` (:class:`CoTAPViT`), ``neck``
    (:class:`ObjectPrototypeNeck`, the object-aware filter re-running the backbone's last block),
    ``patch_head`` and ``cls_head`` (:class:`DINOProjectionHead`), all registered as direct
    submodules, so checkpoints keep mmpretrain's ``backbone.*`` keys (downstream
    ``init_cfg=dict(type='Pretrained', prefix='backbone.')`` works). ``teacher`` is an
    ``nn.ModuleDict`` with the same four keys (a deep copy, ``requires_grad=False``), updated by
    :class:`~cotap_mm.engine.hooks.ema_teacher_hook.EMATeacherHook`; :attr:`student` is a
    property returning a fresh, unregistered ``nn.ModuleDict`` view of the four student modules
    (no duplicated state-dict keys; ``EMATeacherHook(student_name='student')`` finds it through
    ``get_submodule``). The bool buffer ``teacher_initialized`` tells the hook whether the teacher
    was already copied (saved in checkpoints).

    **Inputs** (from :class:`PackGeometricViews` + ``SelfSupDataPreprocessor``): ``inputs`` = V
    student views (``num_global_crops`` global crops first, then local crops) followed by T clean
    teacher views (crop indices ``data_samples[i].teacher_view_indices``; they must contain the
    global crops).

    **Losses** (all keys returned; a disabled term is absent):

    * ``loss_cotap`` (METHOD_cotap §2): patch-head outputs of the G global crops, student (from
      the jittered views) and teacher (clean views). Partner ``v`` of image ``u``: the batch
      position ``data_sample.<partner_key>`` when *every* sample carries that field (hook point
      for precomputed k-NN neighbours loaded into the same batch), otherwise in-batch retrieval:
      the other image of the batch whose teacher CLS output of the filter (2C-dim, averaged over
      the global crops) has the highest cosine similarity (our choice; official: one of 7
      precomputed k-NN neighbours). Random items: the partners of ``num_random`` random other
      images (derangements; see :func:`negative_partners`). For each scale in ``pool_scales``
      maps and the teacher foreground masks (CLS attention of the teacher's last block,
      :func:`foreground_mask` with ``fg_cfg``) are adaptive-avg-pooled, the G crops stacked,
      the ``topk`` cells with the largest pooled mask kept (for u and, separately, for v); the
      cosine similarities (student S / teacher T on the same index sets) are ranked jointly over
      the batch with ``cotap_loss`` (:class:`ContinuousAPLoss`); mean over scales.
    * ``loss_cls``: image-level self-distillation on the CLS head (``cls_loss``,
      :class:`DINOClsLoss`): student CLS-head outputs of all V crops vs the teacher's of the
      global crops (pairs of different crops). Stand-in for the official Sinkhorn CLS terms.
    * ``loss_proto_entropy``: the student keeps a FIFO bank (buffer ``proto_bank`` [bank_size, C,
      K, K]) of :func:`pool_bank_samples` of the patch tokens entering the last block (global
      student crops, ``bank_samples_per_step`` random ones per step, detached). When the bank is
      full for the first time and the prototypes are not initialised, rank 0 runs k-means
      (``neck.init_prototypes_``), the prototypes are broadcast (``mmengine.dist.broadcast``) and
      copied into the teacher's neck. Then ``proto_loss`` (:class:`PrototypeEntropyLoss`) of the
      student prototypes against the bank each step (0 x prototypes before initialisation, so
      the parameter always takes part in the graph). The bank buffers are excluded from DDP's
      buffer broadcast (``_ddp_params_and_buffers_to_ignore``): every rank fills its own bank.

    A term is disabled by passing ``None`` for its loss or a loss with ``loss_weight=0``.

    Args:
        backbone (dict): :class:`CoTAPViT` config.
        neck (dict): :class:`ObjectPrototypeNeck` config; ``embed_dims`` defaults to the
            backbone's.
        patch_head (dict): :class:`DINOProjectionHead` config (``in_channels`` defaults to 2C;
            official ``num_prototypes=512``).
        cls_head (dict): same, official ``num_prototypes=4096``.
        cotap_loss (dict, optional): Defaults to ``dict(type='ContinuousAPLoss')``.
        cls_loss (dict, optional): Defaults to ``dict(type='DINOClsLoss', out_dim=<cls_head K>)``.
        proto_loss (dict, optional): Defaults to ``dict(type='PrototypeEntropyLoss')``.
        pool_scales (Sequence[int]): pooled grid sizes; official (7, 14) for a 14 x 14 grid.
            Each must be <= the patch grid. Defaults to (7, 14).
        topk (int): foreground cells kept per image and scale. Defaults to 5.
        num_random (int): R, random images per anchor. Defaults to 5.
        fg_cfg (dict, optional): kwargs of :func:`foreground_mask` (``keep_mass`` 0.6,
            ``blur_kernel`` 7, ``blur_sigma`` 0.6, ``min_component_size`` 3 by default).
        bank_size (int): prototype bank size. Defaults to 1024.
        bank_samples_per_step (int): samples enqueued per step. Defaults to 32.
        kmeans_iters (int): k-means iterations. Defaults to 3000.
        kmeans_seed (int): k-means seed. Defaults to 0.
        partner_key (str): data-sample field holding the batch position of the partner.
            Defaults to 'neighbor_index'.
        data_preprocessor (dict, optional): Defaults to ``SelfSupDataPreprocessor``.
        init_cfg (dict, optional): Defaults to None.
    """

    def __init__(self,
                 backbone: dict,
                 neck: dict,
                 patch_head: dict,
                 cls_head: dict,
                 cotap_loss: Optional[dict] = dict(type='ContinuousAPLoss'),
                 cls_loss: Optional[dict] = dict(type='DINOClsLoss'),
                 proto_loss: Optional[dict] = dict(type='PrototypeEntropyLoss'),
                 pool_scales: Sequence[int] = (7, 14),
                 topk: int = 5,
                 num_random: int = 5,
                 fg_cfg: Optional[dict] = None,
                 bank_size: int = 1024,
                 bank_samples_per_step: int = 32,
                 kmeans_iters: int = 3000,
                 kmeans_seed: int = 0,
                 partner_key: str = 'neighbor_index',
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
        heads = []
        for name, cfg in (('patch_head', patch_head), ('cls_head', cls_head)):
            if isinstance(cfg, dict):
                cfg = dict(cfg)
                cfg.setdefault('in_channels', out_ch)
                cfg = MODELS.build(cfg)
            if not isinstance(cfg, nn.Module):
                raise TypeError(f'{name} must be a config dict or an nn.Module, got {type(cfg)}')
            heads.append(cfg)
        self.patch_head, self.cls_head = heads

        if not isinstance(pool_scales, (list, tuple)) or not pool_scales or not all(
                isinstance(s, int) and s >= 1 for s in pool_scales):
            raise ValueError(f'pool_scales must be a non-empty sequence of positive ints, got '
                             f'{pool_scales!r}')
        for name, val, low in (('topk', topk, 1), ('num_random', num_random, 0),
                               ('bank_size', bank_size, 1),
                               ('bank_samples_per_step', bank_samples_per_step, 1),
                               ('kmeans_iters', kmeans_iters, 1)):
            if isinstance(val, bool) or not isinstance(val, int) or val < low:
                raise ValueError(f'{name} must be an int >= {low}, got {val!r}')
        if bank_size < self.neck.num_prototypes:
            raise ValueError(f'bank_size ({bank_size}) must be >= neck.num_prototypes '
                             f'({self.neck.num_prototypes}) for the k-means initialisation')
        self.pool_scales = tuple(pool_scales)
        self.topk = topk
        self.num_random = num_random
        self.fg_cfg = dict(fg_cfg or {})
        self.bank_size = bank_size
        self.bank_samples_per_step = bank_samples_per_step
        self.kmeans_iters = kmeans_iters
        self.kmeans_seed = kmeans_seed
        self.partner_key = partner_key

        if isinstance(cls_loss, dict):
            cls_loss = dict(cls_loss)
            if cls_loss.get('type') in ('DINOClsLoss', 'mmpretrain.DINOClsLoss'):
                cls_loss.setdefault('out_dim', self.cls_head.num_prototypes)
        self.cotap_loss = MODELS.build(cotap_loss) if isinstance(cotap_loss, dict) else cotap_loss
        self.cls_loss = MODELS.build(cls_loss) if isinstance(cls_loss, dict) else cls_loss
        self.proto_loss = MODELS.build(proto_loss) if isinstance(proto_loss, dict) else proto_loss

        self.teacher = nn.ModuleDict({k: copy.deepcopy(getattr(self, k)) for k in _STUDENT_KEYS})
        self.teacher.requires_grad_(False)
        self.register_buffer('teacher_initialized', torch.tensor(False))

        K = self.neck.kernel_size
        self.register_buffer('proto_bank', torch.zeros(bank_size, self.neck.embed_dims, K, K))
        self.register_buffer('proto_bank_ptr', torch.tensor(0, dtype=torch.long))
        self.register_buffer('proto_bank_count', torch.tensor(0, dtype=torch.long))
        # every rank fills its own bank: keep DDP from broadcasting rank 0's each step
        self._ddp_params_and_buffers_to_ignore = [
            'proto_bank', 'proto_bank_ptr', 'proto_bank_count'
        ]

    # ------------------------------------------------------------------ structure
    @property
    def student(self) -> nn.ModuleDict:
        """Unregistered ``ModuleDict`` view of the student: backbone, neck, patch_head, cls_head."""
        return nn.ModuleDict({k: getattr(self, k) for k in _STUDENT_KEYS})

    def init_weights(self) -> None:
        """Initialise the student (``init_cfg``), then copy it into the teacher."""
        super().init_weights()
        with torch.no_grad():
            for k in _STUDENT_KEYS:
                self.teacher[k].load_state_dict(getattr(self, k).state_dict())

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
    def _partners(self, embeddings: torch.Tensor,
                  data_samples: Optional[List[DataSample]]) -> torch.Tensor:
        B = embeddings.shape[0]
        if data_samples and all(self.partner_key in ds for ds in data_samples):
            idx = torch.as_tensor([int(ds.get(self.partner_key)) for ds in data_samples],
                                  dtype=torch.long, device=embeddings.device)
            ar = torch.arange(B, device=idx.device)
            if bool(((idx < 0) | (idx >= B) | (idx == ar)).any()):
                raise ValueError(f'data_sample.{self.partner_key} must be batch positions in '
                                 f'[0, {B}) different from the sample itself, got {idx.tolist()}')
            return idx
        return retrieve_partners(embeddings)

    @torch.no_grad()
    def _update_bank(self, tokens_pre_last: torch.Tensor, hw: Tuple[int, int]) -> None:
        samples = pool_bank_samples(tokens_pre_last[:, 1:].detach().float(), hw,
                                    self.neck.kernel_size)
        n = min(samples.shape[0], self.bank_samples_per_step, self.bank_size)
        if n < samples.shape[0]:
            samples = samples[torch.randperm(samples.shape[0], device=samples.device)[:n]]
        ptr = int(self.proto_bank_ptr.item())
        idx = (torch.arange(n, device=samples.device) + ptr) % self.bank_size
        self.proto_bank[idx] = samples.to(self.proto_bank.dtype)
        self.proto_bank_ptr.fill_((ptr + n) % self.bank_size)
        self.proto_bank_count.fill_(min(int(self.proto_bank_count.item()) + n, self.bank_size))

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
        self.teacher['neck'].load_prototypes_(self.neck.prototypes.data)

    def _split_views(self, inputs: List[torch.Tensor], data_samples: List[DataSample]):
        if not isinstance(inputs, (list, tuple)) or not data_samples:
            raise TypeError('CoTAP.loss expects inputs as a list of view batches [B, 3, H, W] and '
                            'a non-empty list of data samples (PackGeometricViews + '
                            'default_collate)')
        meta = data_samples[0].metainfo
        for key in ('num_student_views', 'num_teacher_views', 'num_global_crops'):
            if key not in meta:
                raise ValueError(f'data_samples need metainfo {key!r} (PackGeometricViews)')
        V, T, G = (int(meta['num_student_views']), int(meta['num_teacher_views']),
                   int(meta['num_global_crops']))
        if len(inputs) != V + T:
            raise ValueError(f'inputs must hold V + T = {V} + {T} views, got {len(inputs)}')
        if G < 1:
            raise ValueError(f'CoTAP needs at least one global crop, got num_global_crops={G}')
        if 'teacher_view_indices' in data_samples[0]:
            t_ids = [int(i) for i in data_samples[0].teacher_view_indices.tolist()]
        else:
            t_ids = list(range(T))
        pos = {c: i for i, c in enumerate(t_ids)}
        if any(g not in pos for g in range(G)):
            raise ValueError(f'teacher views {t_ids} must include the global crops 0..{G - 1}')
        teacher_global = [inputs[V + pos[g]] for g in range(G)]
        return inputs[:V], teacher_global, G

    # ------------------------------------------------------------------ loss
    def loss(self, inputs: List[torch.Tensor], data_samples: List[DataSample],
             **kwargs) -> Dict[str, torch.Tensor]:
        """Compute ``loss_cotap``, ``loss_cls`` and ``loss_proto_entropy``.

        Args:
            inputs (list[Tensor]): V student views then T teacher views, each [B, 3, H, W].
            data_samples (list[DataSample]): B samples from :class:`PackGeometricViews`.

        Returns:
            dict[str, Tensor]: scalar losses of the enabled terms.
        """
        student_views, teacher_views, G = self._split_views(inputs, data_samples)
        V = len(student_views)
        B = student_views[0].shape[0]
        use_cotap = _loss_enabled(self.cotap_loss)
        use_cls = _loss_enabled(self.cls_loss)
        use_proto = _loss_enabled(self.proto_loss)
        losses: Dict[str, torch.Tensor] = {}
        if use_proto:
            # before any forward: k-means changes the prototypes in place
            self._maybe_init_prototypes()

        # ---- student
        s_tokens, hw, s_cls_g, s_patch = self._encode(self.student, torch.cat(student_views[:G]))
        s_cls = [s_cls_g]
        if use_cls and V > G:
            groups: List[List[torch.Tensor]] = []
            for v in student_views[G:]:
                if groups and groups[-1][0].shape[-2:] == v.shape[-2:]:
                    groups[-1].append(v)
                else:
                    groups.append([v])
            for grp in groups:
                tok, hw_l = self.backbone.forward_pre_last(torch.cat(grp))
                s_cls.append(self.neck(tok, hw_l, self.backbone.last_block)[0])

        # ---- teacher
        with torch.no_grad():
            t_tokens, t_hw, t_cls_g, t_patch = self._encode(self.teacher, torch.cat(teacher_views))
            if tuple(t_hw) != tuple(hw):
                raise ValueError(f'student and teacher global views differ in grid: {hw} vs {t_hw}')

        if use_cls:
            s_logits = self.cls_head(torch.cat(s_cls)).reshape(V, B, -1)
            with torch.no_grad():
                t_logits = self.teacher['cls_head'](t_cls_g).reshape(G, B, -1)
            losses['loss_cls'] = self.cls_loss(s_logits, t_logits, list(range(V)), list(range(G)))

        if use_cotap:
            losses['loss_cotap'] = self._cotap_term(s_patch, t_tokens, t_cls_g, t_patch, hw, G, B,
                                                    data_samples)

        if use_proto:
            self._update_bank(s_tokens, hw)
            protos = self.neck.prototypes
            if bool(self.neck.prototypes_initialized.item()):
                with torch.autocast(device_type=protos.device.type, enabled=False):
                    losses['loss_proto_entropy'] = self.proto_loss(protos.float(),
                                                                   self.proto_bank.float())
            else:
                losses['loss_proto_entropy'] = protos.sum() * 0.0
        return losses

    def _cotap_term(self, s_patch: torch.Tensor, t_tokens: torch.Tensor, t_cls_g: torch.Tensor,
                    t_patch_feat: torch.Tensor, hw: Tuple[int, int], G: int, B: int,
                    data_samples: List[DataSample]) -> torch.Tensor:
        h, w = int(hw[0]), int(hw[1])
        for ks in self.pool_scales:
            if ks > min(h, w):
                raise ValueError(f'pool_scales {self.pool_scales} must not exceed the patch grid '
                                 f'{(h, w)} of the global crops')
            if self.topk > G * ks * ks:
                raise ValueError(f'topk={self.topk} exceeds the {G * ks * ks} pooled cells at '
                                 f'scale {ks}')
        s_scores = self.patch_head(s_patch)  # [G*B, N, K]
        with torch.no_grad():
            t_scores = self.teacher['patch_head'](t_patch_feat)
            attn = self.teacher['backbone'].last_cls_attention(t_tokens)
            fg = foreground_mask(attn, (h, w), **self.fg_cfg)  # [G*B, h, w]
            emb = t_cls_g.float().reshape(G, B, -1).mean(dim=0)
            partner = self._partners(emb, data_samples)
            perms = random_derangements(B, self.num_random, device=partner.device)
            negatives = negative_partners(partner, perms)

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
                t_sim, is_random = build_similarity_items(t_tok, partner, negatives)
            s_sim, _ = build_similarity_items(s_tok, partner, negatives)
            terms.append(self.cotap_loss(s_sim, t_sim, is_random))
        return torch.stack(terms).mean()

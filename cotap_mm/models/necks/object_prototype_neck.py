"""CoTAP's object-aware filter: the last ViT block re-run with cross-attention to spatial prototypes.

CoTAP: "Semantic Concentration for Self-Supervised Dense Representations Learning",
https://arxiv.org/abs/2509.09429 (official code: github.com/KID-7391/CoTAP,
``models/vit/vision_transformer_depth.py``, ``Block.forward_kernel``).
"""
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from mmpretrain.registry import MODELS

from ..utils.host_state import HostMirrorMixin
from .prototype_ops import kmeans_prototypes, prototype_conv_scores

__all__ = ['ObjectPrototypeNeck', 'FilteredTokens', 'filtered_forward', 'tokens_to_map']


@MODELS.register_module()
class ObjectPrototypeNeck(HostMirrorMixin, BaseModule):
    """Object-aware filter of CoTAP: the last ViT block applied again, with cross-attention to
    learnable spatial prototypes in place of self-attention.

    Paper: `Semantic Concentration for Self-Supervised Dense Representations Learning
    <https://arxiv.org/abs/2509.09429>`_.

    Given the tokens entering the backbone's last block and that block (shared weights), the block
    first runs normally, ``y = block(tokens)``; the filter then reads ``y``:

    * queries ``q = qkv(ln1(y))`` (q part); keys / values = the same ``qkv`` applied to
      ``norm_in(prototypes)`` (M prototypes of K x K cells of C channels, used detached);
    * patch scores: sum of ``<q(neighbour), k_m(offset)>`` over the K x K neighbourhood
      (:func:`~cotap_mm.models.necks.prototype_ops.prototype_conv_scores`), times ``scale``,
      softmax over the M prototypes; CLS scores: dot product with cell-averaged keys; values are
      averaged over the cells;
    * ``z = y + proj(out)`` (with the block's dropout, layer scale and drop path),
      ``z = z + ffn(ln2(z))``;
    * outputs ``norm_out_cls([y, z])`` [B, 2C] and ``norm_out_patch([y, z])`` [B, N, 2C].

    The prototypes get no gradient here; they are learnt through
    :class:`~cotap_mm.models.losses.prototype_entropy_loss.PrototypeEntropyLoss` and initialised by
    :meth:`init_prototypes_` (k-means on a bank of pooled tokens). ``prototypes_initialized`` is a
    bool buffer saved in checkpoints. docs/cotap.md compares this module with the released code.

    Args:
        embed_dims (int): C, the backbone width.
        num_prototypes (int): M. Defaults to 64.
        kernel_size (int): K, odd spatial size of a prototype. Defaults to 3.
        scale (float, optional): score scale; None means ``num_prototypes ** -0.5``.
            Defaults to None.
        norm_eps (float): eps of the three new LayerNorms. Defaults to 1e-6.
        init_cfg (dict, optional): mmengine init config. Defaults to None.
    """

    def __init__(self,
                 embed_dims: int,
                 num_prototypes: int = 64,
                 kernel_size: int = 3,
                 scale: Optional[float] = None,
                 norm_eps: float = 1e-6,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if not isinstance(embed_dims, int) or embed_dims < 1:
            raise ValueError(f'embed_dims must be a positive int, got {embed_dims!r}')
        if not isinstance(num_prototypes, int) or num_prototypes < 1:
            raise ValueError(f'num_prototypes must be a positive int, got {num_prototypes!r}')
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be a positive odd int, got {kernel_size!r}')
        self.embed_dims = embed_dims
        self.num_prototypes = num_prototypes
        self.kernel_size = kernel_size
        self.scale = float(num_prototypes**-0.5 if scale is None else scale)
        self.prototypes = nn.Parameter(
            torch.empty(num_prototypes, embed_dims, kernel_size, kernel_size))
        trunc_normal_(self.prototypes, std=1.0)
        self.norm_in = nn.LayerNorm(embed_dims, eps=norm_eps)
        self.norm_out_patch = nn.LayerNorm(2 * embed_dims, eps=norm_eps)
        self.norm_out_cls = nn.LayerNorm(2 * embed_dims, eps=norm_eps)
        self.register_mirrored_buffer('prototypes_initialized', False)

    @property
    def out_channels(self) -> int:
        """Width of the output tokens (2C)."""
        return 2 * self.embed_dims

    # ------------------------------------------------------------------ prototypes
    @property
    def initialized(self) -> bool:
        """Whether the prototypes were set (k-means or loaded): the host copy of
        ``prototypes_initialized``, read without a device sync."""
        return self.host_value('prototypes_initialized')

    @torch.no_grad()
    def load_prototypes_(self, prototypes: torch.Tensor) -> None:
        """Copy given prototypes [M, C, K, K] in and mark them initialised."""
        if tuple(prototypes.shape) != tuple(self.prototypes.shape):
            raise ValueError(f'prototypes must have shape {tuple(self.prototypes.shape)}, got '
                             f'{tuple(prototypes.shape)}')
        self.prototypes.copy_(prototypes.to(self.prototypes))
        self.mark_initialized()

    def mark_initialized(self) -> None:
        """Set ``prototypes_initialized`` (buffer and host copy)."""
        self.set_host_value('prototypes_initialized', True)

    @torch.no_grad()
    def init_prototypes_(self, bank: torch.Tensor, iters: int = 3000, seed: int = 0,
                         init: str = 'random') -> None:
        """Set the prototypes by spherical k-means on ``bank`` [S, C, K, K] (S >= M).

        See :func:`~cotap_mm.models.necks.prototype_ops.kmeans_prototypes`. Sets
        ``prototypes_initialized`` to True. Distributed broadcast is the caller's job.
        """
        expected = (self.embed_dims, self.kernel_size, self.kernel_size)
        if bank.dim() != 4 or tuple(bank.shape[1:]) != expected:
            raise ValueError(f'bank must be [S, {expected[0]}, {expected[1]}, {expected[2]}], got '
                             f'{tuple(bank.shape)}')
        centres = kmeans_prototypes(bank, self.num_prototypes, iters=iters, seed=seed, init=init)
        self.load_prototypes_(centres)

    # ------------------------------------------------------------------ forward
    def _prototype_kv(self, block: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the (detached) prototypes: each [M, H, K, K, d]."""
        attn = block.attn
        C, H = self.embed_dims, attn.num_heads
        d = C // H
        M, K = self.num_prototypes, self.kernel_size
        cells = self.prototypes.detach().permute(0, 2, 3, 1)  # [M, K, K, C]
        cells = self.norm_in(cells)
        w, b = attn.qkv.weight, attn.qkv.bias
        kv = F.linear(cells, w[C:], None if b is None else b[C:])  # [M, K, K, 2C]
        kv = kv.reshape(M, K, K, 2, H, d).permute(3, 0, 4, 1, 2, 5)  # [2, M, H, K, K, d]
        return kv[0], kv[1]

    def _attn_out(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The block's attention output path after the heads: proj, proj-drop, layer-scale, drop-path."""
        attn = block.attn
        x = attn.proj(x)
        return attn.out_drop(attn.gamma1(attn.proj_drop(x)))

    def forward(self, tokens_pre_last: torch.Tensor, hw: Sequence[int],
                block: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run the last block, filter its output, concatenate both, normalise.

        Args:
            tokens_pre_last (Tensor): [B, 1+N, C], CLS first, patches row-major (N = h*w).
            hw (Sequence[int]): patch grid (h, w).
            block (nn.Module): the backbone's last mmpretrain ``TransformerEncoderLayer``
                (``ln1``, ``attn.qkv``, ``attn.proj``, ``ln2``, ``ffn``).

        Returns:
            tuple: ``cls`` [B, 2C] and ``patches`` [B, N, 2C].
        """
        x = tokens_pre_last
        if x.dim() != 3 or x.shape[-1] != self.embed_dims:
            raise ValueError(f'tokens_pre_last must be [B, 1+N, {self.embed_dims}], got shape '
                             f'{tuple(x.shape)}')
        h, w = int(hw[0]), int(hw[1])
        B, L, C = x.shape
        if L != 1 + h * w:
            raise ValueError(f'tokens_pre_last has {L} tokens, expected 1 + h*w = {1 + h * w} for '
                             f'hw={(h, w)}')
        attn = block.attn
        H = attn.num_heads
        if C % H != 0:
            raise ValueError(f'embed_dims={C} is not divisible by the block heads {H}')
        d = C // H

        # the filter reads the ordinary output of the block (the same weights applied twice in a row)
        y = block(x)  # [B, 1+N, C]

        wq = attn.qkv.weight[:C]
        bq = None if attn.qkv.bias is None else attn.qkv.bias[:C]
        q = F.linear(block.ln1(y), wq, bq).reshape(B, L, H, d)  # [B, 1+N, H, d]
        k, v = self._prototype_kv(block)  # [M, H, K, K, d]
        k_mean = k.mean(dim=(2, 3))  # [M, H, d]
        v_mean = v.mean(dim=(2, 3))  # [M, H, d]

        # patches: 3x3-conv scores, softmax over prototypes
        q_patch = q[:, 1:].reshape(B, h, w, H, d).permute(0, 3, 1, 2, 4)  # [B, H, h, w, d]
        p_attn = (prototype_conv_scores(q_patch, k) * self.scale).softmax(dim=-1)  # [B, H, N, M]
        out_patch = torch.einsum('bhnm,mhd->bnhd', p_attn, v_mean).reshape(B, h * w, C)
        # CLS: plain dot product with cell-averaged keys
        c_attn = (torch.einsum('bhd,mhd->bhm', q[:, 0], k_mean) * self.scale).softmax(dim=-1)
        out_cls = torch.einsum('bhm,mhd->bhd', c_attn, v_mean).reshape(B, 1, C)

        z = y + self._attn_out(block, torch.cat([out_cls, out_patch], dim=1))
        z = block.ffn(block.ln2(z), identity=z)

        cls = self.norm_out_cls(torch.cat([y[:, 0], z[:, 0]], dim=-1))
        patches = self.norm_out_patch(torch.cat([y[:, 1:], z[:, 1:]], dim=-1))
        return cls, patches


class FilteredTokens(NamedTuple):
    """Output of :func:`filtered_forward`."""
    tokens: torch.Tensor  # tokens entering the last block [R, 1+N, C]
    hw: Tuple[int, int]  # patch grid, N = h * w
    cls: torch.Tensor  # [R, 2C]
    patches: torch.Tensor  # [R, N, 2C]


def filtered_forward(backbone: nn.Module, neck: ObjectPrototypeNeck, x: torch.Tensor,
                     **edits: torch.Tensor) -> FilteredTokens:
    """Images through the backbone up to its last block, then the last block and the filter.

    The one place that wires :meth:`CoTAPViT.forward_tokens` (``edits``: its token edits) to
    :class:`ObjectPrototypeNeck`; CoTAP's training step, ``CoTAP.extract_feat`` and
    :class:`CoTAPFilteredViT` all use it.

    Args:
        backbone (nn.Module): :class:`CoTAPViT`.
        neck (ObjectPrototypeNeck): the filter.
        x (Tensor): images [R, 3, H, W].
        **edits: ``replace``, ``donor_index``, ``mim_mask``, ``mask_token``.
    """
    tokens, hw, _ = backbone.forward_tokens(x, stop_before_last=True, **edits)
    cls, patches = neck(tokens, hw, backbone.last_block)
    return FilteredTokens(tokens, tuple(hw), cls, patches)


def tokens_to_map(patches: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """Patch tokens [B, N, D] (row-major) -> a feature map [B, D, h, w]."""
    B, N, D = patches.shape
    return patches.transpose(1, 2).reshape(B, D, int(hw[0]), int(hw[1]))


"""DINO-layout Vision Transformer for CoTAP, with access to the last block's input and CLS attention.

CoTAP: "Semantic Concentration for Self-Supervised Dense Representations Learning",
https://arxiv.org/abs/2509.09429 (official code: github.com/KID-7391/CoTAP).
"""
import math
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmpretrain.models.backbones import VisionTransformer
from mmpretrain.models.backbones.vision_transformer import TransformerEncoderLayer
from mmpretrain.models.utils import resize_pos_embed
from mmengine.runner.checkpoint import _load_checkpoint
from mmpretrain.registry import MODELS

from cotap_mm.utils.config_checks import check_known_keys
from cotap_mm.utils.start_weights import check_start_weights
from cotap_mm.utils.state_dict import find_state_dict
from .token_edits import apply_mask_token, substitute_tokens

__all__ = ['CoTAPViT', 'ViTTokens', 'foreground_mask', 'gaussian_blur2d',
           'remove_small_components']


class ViTTokens(NamedTuple):
    """Output of :meth:`CoTAPViT.forward_tokens`."""
    tokens: torch.Tensor  # [R, e + N, C]
    hw: Tuple[int, int]  # patch grid, N = h * w
    layers: List[torch.Tensor]  # tokens after each requested block


@MODELS.register_module()
class CoTAPViT(VisionTransformer):
    """DINO-style ViT (mmpretrain ``VisionTransformer``) exposing what CoTAP needs from the last block.

    Paper: `Semantic Concentration for Self-Supervised Dense Representations Learning
    <https://arxiv.org/abs/2509.09429>`_. CoTAP post-pretrains DINO / iBOT / Mugs / Leopart ViTs: qkv
    bias, LayerNorm eps 1e-6, no drop-path. The object-aware filter
    (:class:`~cotap_mm.models.necks.object_prototype_neck.ObjectPrototypeNeck`) re-runs the *last*
    block, so this backbone gives the tokens entering it (:meth:`forward_pre_last`), the block itself
    (:attr:`last_block`) and its CLS->patch attention (:meth:`last_cls_attention`, used for the teacher
    foreground mask, :func:`foreground_mask`). :meth:`forward` is mmpretrain's unchanged, so the
    backbone works in mmseg/mmdet configs as ``type='mmpretrain.CoTAPViT', out_type='featmap'``.

    Args:
        arch (str | dict): 'dino-s' / 'dino-small' (embed 384, 12 layers, 6 heads, mlp 1536),
            'dino-b' / 'dino-base' (768, 12, 12, 3072), any mmpretrain ViT arch name, or a dict with
            ``embed_dims``, ``num_layers``, ``num_heads``, ``feedforward_channels``. Note mmpretrain's
            ``'s'``/``'small'`` is *not* DINO's ViT-S. DINOv2: 'dinov2-s' / '-b' / '-l' / '-g' (with
            ``patch_size=14``, ``img_size=518``, ``layer_scale_init_value=1e-5``; '-g' also
            ``layer_cfgs=dict(ffn_type='swiglu_fused')``). Defaults to 'dino-s'.
        img_size (int | tuple): pretraining image size (sets the stored pos-embed grid). Defaults to 224.
        patch_size (int): 16 for ViT-S/16, ViT-B/16; 8 for ViT-B/8, ViT-S/8. Defaults to 16.
        drop_path_rate (float): stochastic depth. Defaults to 0 (as CoTAP).
        qkv_bias (bool): Defaults to True.
        norm_cfg (dict): Defaults to ``dict(type='LN', eps=1e-6)``.
        **kwargs: everything else of :class:`mmpretrain.models.backbones.VisionTransformer`
            (``out_type``, ``out_indices``, ``final_norm``, ``frozen_stages``, ``init_cfg``, ...).
    """
    arch_zoo = {
        **VisionTransformer.arch_zoo,
        **dict.fromkeys(['dino-s', 'dino-small'], {
            'embed_dims': 384,
            'num_layers': 12,
            'num_heads': 6,
            'feedforward_channels': 1536,
        }),
        **dict.fromkeys(['dino-b', 'dino-base'], {
            'embed_dims': 768,
            'num_layers': 12,
            'num_heads': 12,
            'feedforward_channels': 3072,
        }),
        # DINOv2 ViT-S/B/L/g 14 (mmpretrain already has 'dinov2-s' and 'dinov2-g'). Use with
        # patch_size=14, img_size=518 (37x37 pos-embed), layer_scale_init_value=1e-5, and for 'dinov2-g'
        # layer_cfgs=dict(ffn_type='swiglu_fused') (6144 -> SwiGLU hidden 4096, as DINOv2).
        **dict.fromkeys(['dinov2-b', 'dinov2-base'], {
            'embed_dims': 768,
            'num_layers': 12,
            'num_heads': 12,
            'feedforward_channels': 3072,
        }),
        **dict.fromkeys(['dinov2-l', 'dinov2-large'], {
            'embed_dims': 1024,
            'num_layers': 24,
            'num_heads': 16,
            'feedforward_channels': 4096,
        }),
    }

    def __init__(self,
                 arch: Union[str, Dict[str, int]] = 'dino-s',
                 img_size: Union[int, Tuple[int, int]] = 224,
                 patch_size: int = 16,
                 drop_path_rate: float = 0.,
                 qkv_bias: bool = True,
                 norm_cfg: Optional[dict] = None,
                 **kwargs) -> None:
        if norm_cfg is None:
            norm_cfg = dict(type='LN', eps=1e-6)
        super().__init__(
            arch=arch,
            img_size=img_size,
            patch_size=patch_size,
            drop_path_rate=drop_path_rate,
            qkv_bias=qkv_bias,
            norm_cfg=norm_cfg,
            **kwargs)
        self.num_heads: int = self.arch_settings['num_heads']

    def init_weights(self) -> None:
        """mmpretrain's initialisation; a ``Pretrained`` ``init_cfg`` is checked first.

        ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=..., strict=True)``: keys of this
        ViT missing from the checkpoint or shaped differently (a position embedding of another
        grid is resized, as mmpretrain does) raise
        :class:`~cotap_mm.utils.start_weights.StartWeightsError` naming how many and the first
        few; every difference goes to the run's log. ``strict=False`` (on purpose) only logs them.
        """
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg]
        pretrained = [c for c in cfgs if isinstance(c, dict) and c.get('type') == 'Pretrained']
        if not pretrained:
            super().init_weights()
            return
        cleaned = []
        for c in cfgs:
            if c in pretrained:
                c = dict(c)
                strict = c.pop('strict', True)
                check_known_keys(f'{type(self).__name__} Pretrained init_cfg', c,
                                 ['type', 'checkpoint', 'prefix', 'map_location', 'strict'])
                if not self.is_init:
                    self._check_pretrained(c['checkpoint'], c.get('prefix'),
                                           c.get('map_location', 'cpu'), bool(strict))
            cleaned.append(c)
        saved = self.init_cfg
        self.init_cfg = cleaned if isinstance(saved, list) else cleaned[0]
        try:
            super().init_weights()
        finally:
            self.init_cfg = saved

    def _check_pretrained(self, checkpoint: str, prefix: Optional[str], map_location: Any,
                          strict: bool) -> None:
        ckpt = _load_checkpoint(checkpoint, map_location=map_location, logger='current')
        state = find_state_dict(ckpt, str(checkpoint))
        if prefix:
            prefix = prefix if prefix.endswith('.') else prefix + '.'
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        check_start_weights(self.state_dict(), state, source=str(checkpoint), strict=strict,
                            checked_prefix='', what=f'{type(self).__name__} init_cfg '
                            f'(prefix={prefix!r})')

    @property
    def last_block(self) -> TransformerEncoderLayer:
        """The last transformer block (the one the object-aware filter re-runs)."""
        return self.layers[-1]

    def embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Patch embedding + CLS token + pos-embed (resized to the input grid) + dropout + pre-norm.

        Args:
            x (Tensor): images [B, 3, H, W].

        Returns:
            tuple: tokens [B, 1+N, C] (N = h*w) and the patch grid (h, w).
        """
        if x.dim() != 4:
            raise ValueError(f'x must be an image batch [B, C, H, W], got shape {tuple(x.shape)}')
        B = x.shape[0]
        x, patch_resolution = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        x = x + resize_pos_embed(
            self.pos_embed,
            self.patch_resolution,
            patch_resolution,
            mode=self.interpolate_mode,
            num_extra_tokens=self.num_extra_tokens)
        x = self.drop_after_pos(x)
        x = self.pre_norm(x)
        return x, tuple(patch_resolution)

    def forward_tokens(self,
                       x: torch.Tensor,
                       *,
                       stop_before_last: bool = False,
                       final_norm: bool = False,
                       out_layers: Sequence[int] = (),
                       replace: Optional[torch.Tensor] = None,
                       donor_index: Optional[torch.Tensor] = None,
                       mim_mask: Optional[torch.Tensor] = None,
                       mask_token: Optional[torch.Tensor] = None) -> ViTTokens:
        """The token forward every algorithm, the filter and the feature extractors use.

        Embedding (:meth:`embed`), optional token edits (foreign-token substitution, then iBOT
        masking, :mod:`~cotap_mm.models.backbones.token_edits`: the donors are the clean
        embedded tokens), the blocks, optionally the final norm.

        Args:
            x (Tensor): images [R, 3, H, W].
            stop_before_last (bool): stop before the last block (the tokens the object-aware
                filter re-runs it on). Defaults to False.
            final_norm (bool): apply ``ln1`` after the last block when the backbone has
                ``final_norm`` (mmpretrain's ``out_type='raw'`` output). Defaults to False.
            out_layers (Sequence[int]): also return the tokens after these blocks (negative
                indices count from the end; the last one after the final norm when it is
                applied). Defaults to ().
            replace (BoolTensor, optional): [R, N] positions that take the token of row
                ``donor_index`` (:func:`substitute_tokens`).
            donor_index (LongTensor, optional): [R], required with ``replace``.
            mim_mask (BoolTensor, optional): [R, N] positions replaced by ``mask_token``
                (:func:`apply_mask_token`).
            mask_token (Tensor, optional): [C], required with ``mim_mask``.

        Returns:
            ViTTokens: ``tokens`` [R, e + N, C], ``hw`` (h, w) with N = h * w, ``layers`` (the
            tokens of ``out_layers``, in that order).
        """
        tokens, hw = self.embed(x)
        if replace is not None:
            if donor_index is None:
                raise ValueError('forward_tokens: replace needs donor_index')
            tokens = substitute_tokens(tokens, replace, donor_index, self.num_extra_tokens)
        if mim_mask is not None:
            if mask_token is None:
                raise ValueError('forward_tokens: mim_mask needs mask_token')
            tokens = apply_mask_token(self, tokens, mim_mask, mask_token, hw)
        depth = len(self.layers) - 1 if stop_before_last else len(self.layers)
        wanted = {int(i) % len(self.layers): k for k, i in enumerate(out_layers)}
        if any(i >= depth for i in wanted):
            raise ValueError(f'out_layers {tuple(out_layers)} include a block the forward does not '
                             f'run (stop_before_last={stop_before_last})')
        layers: List[Optional[torch.Tensor]] = [None] * len(wanted)
        norm = final_norm and bool(getattr(self, 'final_norm', False))
        for i in range(depth):
            tokens = self.layers[i](tokens)
            if norm and i == len(self.layers) - 1:
                tokens = self.ln1(tokens)
            if i in wanted:
                layers[wanted[i]] = tokens
        return ViTTokens(tokens, tuple(hw), layers)

    def forward_pre_last(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Tokens entering the last block [B, 1+N, C] and the patch grid (h, w):
        :meth:`forward_tokens` with ``stop_before_last=True``."""
        out = self.forward_tokens(x, stop_before_last=True)
        return out.tokens, out.hw

    def last_cls_attention(self, tokens_pre_last: torch.Tensor) -> torch.Tensor:
        """CLS->patch self-attention of the last block (DINO's ``get_last_selfattention()[:, :, 0, 1:]``).

        Computed from the last block's ``ln1`` and ``attn.qkv`` with scale head_dim**-0.5; the softmax
        runs over all 1+N keys (CLS included) and the CLS->CLS entry is then dropped (not renormalised),
        exactly like DINO / Leopart.

        Args:
            tokens_pre_last (Tensor): [B, 1+N, C] from :meth:`forward_pre_last`.

        Returns:
            Tensor: [B, num_heads, N].
        """
        if self.cls_token is None:
            raise ValueError('last_cls_attention needs a CLS token (with_cls_token=True)')
        if tokens_pre_last.dim() != 3 or tokens_pre_last.shape[-1] != self.embed_dims:
            raise ValueError('tokens_pre_last must be [B, 1+N, embed_dims='
                             f'{self.embed_dims}], got shape {tuple(tokens_pre_last.shape)}')
        blk = self.last_block
        B, L, C = tokens_pre_last.shape
        H = blk.attn.num_heads
        d = blk.attn.head_dims
        qkv = blk.attn.qkv(blk.ln1(tokens_pre_last)).reshape(B, L, 3, H, d)
        q = qkv[:, :1, 0].transpose(1, 2)  # [B, H, 1, d]
        k = qkv[:, :, 1].transpose(1, 2)  # [B, H, L, d]
        attn = (q * d**-0.5) @ k.transpose(-2, -1)  # [B, H, 1, L]
        attn = attn.softmax(dim=-1)
        return attn[:, :, 0, self.num_extra_tokens:]


def _gaussian_kernel1d(kernel_size: int, sigma: float, dtype: torch.dtype,
                       device: torch.device) -> torch.Tensor:
    x = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    g = torch.exp(-x**2 / (2 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def gaussian_blur2d(x: torch.Tensor, kernel_size: int = 7, sigma: float = 0.6) -> torch.Tensor:
    """Separable normalised Gaussian blur with reflect padding (kornia's ``gaussian_blur2d`` default).

    Args:
        x (Tensor): [B, h, w] maps.
        kernel_size (int): odd size. Defaults to 7.
        sigma (float): std in pixels (patches). Defaults to 0.6.

    Returns:
        Tensor: [B, h, w].
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be a positive odd int, got {kernel_size}')
    if sigma <= 0:
        raise ValueError(f'sigma must be > 0, got {sigma}')
    if x.dim() != 3:
        raise ValueError(f'x must be [B, h, w], got shape {tuple(x.shape)}')
    pad = kernel_size // 2
    if pad >= min(x.shape[-2:]):
        raise ValueError(f'reflect padding needs h, w > kernel_size // 2 = {pad}, got grid '
                         f'{tuple(x.shape[-2:])}; use a smaller blur_kernel')
    g = _gaussian_kernel1d(kernel_size, sigma, x.dtype, x.device)
    y = F.pad(x[:, None], (pad, pad, pad, pad), mode='reflect')
    y = F.conv2d(y, g.view(1, 1, 1, -1))
    y = F.conv2d(y, g.view(1, 1, -1, 1))
    return y[:, 0]


def remove_small_components(mask: torch.Tensor, min_size: int) -> torch.Tensor:
    """Drop 8-connected components with fewer than ``min_size`` pixels from a boolean mask.

    Pure torch (runs on the mask's device): labels are propagated by 3x3 max-pooling until stable;
    8-connectivity matches ``skimage.measure.label``'s default used by Leopart.

    Args:
        mask (BoolTensor): [B, h, w].
        min_size (int): components with fewer pixels are removed; <= 1 keeps everything.

    Returns:
        BoolTensor: [B, h, w].
    """
    if mask.dtype != torch.bool or mask.dim() != 3:
        raise ValueError(f'mask must be a bool tensor [B, h, w], got {mask.dtype} {tuple(mask.shape)}')
    if min_size <= 1 or mask.numel() == 0:
        return mask
    B, h, w = mask.shape
    n = h * w
    fg = mask.to(torch.float64)[:, None]
    labels = torch.arange(1, n + 1, dtype=torch.float64, device=mask.device).view(1, 1, h, w) * fg
    for _ in range(n):
        new = F.max_pool2d(labels, 3, stride=1, padding=1) * fg
        if torch.equal(new, labels):
            break
        labels = new
    lab = labels.view(B, n).long()
    counts = torch.zeros(B, n + 1, dtype=torch.long, device=mask.device)
    counts.scatter_add_(1, lab, torch.ones_like(lab))
    size = counts.gather(1, lab)
    keep = mask.view(B, n) & (size >= min_size)
    return keep.view(B, h, w)


def foreground_mask(cls_attn: torch.Tensor,
                    hw: Optional[Sequence[int]] = None,
                    keep_mass: float = 0.6,
                    blur_kernel: int = 7,
                    blur_sigma: float = 0.6,
                    min_component_size: int = 0) -> torch.Tensor:
    """Binary foreground mask from CLS->patch attention (Leopart's ``process_attentions``).

    Steps, as in Leopart (which CoTAP builds on):

    1. **Average over heads first** (Leopart averages the heads' attention maps, then processes the
       single averaged map; DINO's ``visualize_attention`` instead thresholds each head). Because the
       blur is linear, averaging before or after blurring gives the same map.
    2. Gaussian blur, ``blur_kernel`` x ``blur_kernel``, sigma ``blur_sigma``, reflect padding
       (kornia's ``gaussian_blur2d`` default, used by Leopart).
    3. Keep the smallest set of patches holding ``keep_mass`` of the (blurred) attention mass:
       sort ascending, normalise, keep patches whose inclusive cumulative mass exceeds 1 - keep_mass.
    4. Optionally remove 8-connected components with fewer than ``min_component_size`` patches
       (Leopart removes components of <= 2 pixels, i.e. ``min_component_size=3``; the released
       CoTAP does not: 0 skips the step).

    Args:
        cls_attn (Tensor): [B, heads, h, w] or [B, heads, N] attention of CLS to the patches.
        hw (Sequence[int], optional): (h, w) when ``cls_attn`` is [B, heads, N]; if None, N must be
            a perfect square.
        keep_mass (float): fraction of attention mass kept, in (0, 1]. Defaults to 0.6.
        blur_kernel (int): odd Gaussian kernel size. Defaults to 7.
        blur_sigma (float): Gaussian std (patches). Defaults to 0.6.
        min_component_size (int): see step 4. Defaults to 0.

    Returns:
        BoolTensor: [B, h, w], True = foreground. No gradient.
    """
    if not 0 < keep_mass <= 1:
        raise ValueError(f'keep_mass must be in (0, 1], got {keep_mass}')
    if cls_attn.dim() == 3:
        B, nh, N = cls_attn.shape
        if hw is None:
            side = math.isqrt(N)
            if side * side != N:
                raise ValueError(f'cls_attn has N={N} patches, not a square grid: pass hw=(h, w)')
            hw = (side, side)
        h, w = int(hw[0]), int(hw[1])
        if h * w != N:
            raise ValueError(f'hw={tuple(hw)} does not match N={N} patches of cls_attn')
        cls_attn = cls_attn.reshape(B, nh, h, w)
    elif cls_attn.dim() != 4:
        raise ValueError('cls_attn must be [B, heads, h, w] or [B, heads, N], got shape '
                         f'{tuple(cls_attn.shape)}')
    with torch.no_grad():
        a = cls_attn.detach().float().mean(dim=1)  # [B, h, w]
        a = gaussian_blur2d(a, blur_kernel, blur_sigma)
        B, h, w = a.shape
        flat = a.reshape(B, h * w)
        val, idx = torch.sort(flat, dim=1)
        cum = torch.cumsum(val / val.sum(dim=1, keepdim=True).clamp_min(1e-12), dim=1)
        keep_sorted = cum > (1 - keep_mass)
        keep = torch.zeros_like(keep_sorted).scatter(1, idx, keep_sorted)
        mask = keep.view(B, h, w)
        return remove_small_components(mask, min_component_size)

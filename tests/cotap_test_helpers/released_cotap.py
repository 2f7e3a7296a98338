"""An independent port of the math of the released CoTAP ViT, for parity tests.

Written for the tests from the release's description (original release of the CoTAP code,
``models/vit/vision_transformer_depth.py``): module and parameter names follow the release's
checkpoint layout (``blocks.N.norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1/fc2``;
the last block adds ``norm_in``, ``norm_out_patch``, ``norm_out_cls``; ``kernel`` holds the
prototypes [M, C, K, K]; ``projection_heads.0/1`` are the patch / CLS heads), the arithmetic is
written our own way (scores through ``unfold`` instead of a per-head convolution, explicit loops
over heads) so that a shared mistake is unlikely.

The release builds the filter's three LayerNorms in *every* ``Block`` (only the last block's are
used: ``selective_layer_start`` = depth - 1), so its checkpoints carry ``blocks.N.norm_in`` etc. for
every N; ``ReleasedViT(filter_norms_in_every_block=True)`` (the default) writes them the same way.
The release trains the ViT inside a PyTorch-Lightning module (``train.py``: ``MaimModel.net`` = the
student, ``MaimModel.net_teacher`` = the EMA teacher, both ``DinoFeaturizer`` s holding the ViT as
``.model``); :func:`released_training_checkpoint` wraps state dicts the way its ``ModelCheckpoint``
saves them.

Two things differ on purpose: the release normalises raw [0, 1] images inside the model (ImageNet
mean / std); this port takes already-normalised images, as our data preprocessor hands them to the
backbone. And ``layer_scale`` multiplies the attention / MLP branches, which the release's DINO ViT
does not have (0 disables it, as in the release): our blocks support it (DINOv2 starts); its
parameters are named as in DINOv2 checkpoints, ``blocks.N.ls1.gamma`` / ``ls2.gamma``.
"""
import math
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['ReleasedBlock', 'ReleasedViT', 'released_filter_scores', 'released_training_checkpoint']


def released_filter_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Patch-to-prototype scores of one head, by unfolding the query map.

    Args:
        q: [B, h, w, d] queries of one head.
        k: [M, K, K, d] prototype keys of that head.

    Returns:
        [B, h*w, M]: ``sum_{dy,dx} <q[y+dy-r, x+dx-r], k[m, dy, dx]>`` (zero padding).
    """
    B, h, w, d = q.shape
    M, K = k.shape[:2]
    cols = F.unfold(q.permute(0, 3, 1, 2), K, padding=K // 2)  # [B, d*K*K, h*w], c-major
    templates = k.permute(0, 3, 1, 2).reshape(M, d * K * K)  # same (c, dy, dx) order
    return torch.einsum('bjn,mj->bnm', cols, templates)


class _Attention(nn.Module):

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)


class _Mlp(nn.Module):

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _LayerScale(nn.Module):
    """DINOv2's ``LayerScale`` (parameter ``gamma``)."""

    def __init__(self, dim: int, value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim, ), value))


class ReleasedBlock(nn.Module):
    """A DINO ViT block; ``filtered=True`` adds the released filter's three LayerNorms."""

    def __init__(self, dim: int, heads: int, hidden: int, filtered: bool = False,
                 layer_scale: float = 0.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim, self.heads = dim, heads
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _Mlp(dim, hidden)
        if filtered:
            self.norm_in = nn.LayerNorm(dim, eps=eps)
            self.norm_out_patch = nn.LayerNorm(2 * dim, eps=eps)
            self.norm_out_cls = nn.LayerNorm(2 * dim, eps=eps)
        self.ls1 = _LayerScale(dim, layer_scale) if layer_scale else None
        self.ls2 = _LayerScale(dim, layer_scale) if layer_scale else None

    @property
    def gamma1(self) -> Optional[torch.Tensor]:
        """Layer scale of the attention branch (None without)."""
        return None if self.ls1 is None else self.ls1.gamma

    @property
    def gamma2(self) -> Optional[torch.Tensor]:
        """Layer scale of the MLP branch (None without)."""
        return None if self.ls2 is None else self.ls2.gamma

    def _scaled(self, x: torch.Tensor, gamma: Optional[torch.Tensor]) -> torch.Tensor:
        return x if gamma is None else x * gamma

    def self_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Multi-head self-attention of normalised tokens: (output before proj, attention)."""
        B, L, C = x.shape
        d = C // self.heads
        qkv = self.attn.qkv(x)
        outs, attns = [], []
        for hd in range(self.heads):
            q = qkv[..., hd * d:(hd + 1) * d]
            k = qkv[..., C + hd * d:C + (hd + 1) * d]
            v = qkv[..., 2 * C + hd * d:2 * C + (hd + 1) * d]
            a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1)
            attns.append(a)
            outs.append(a @ v)
        return torch.cat(outs, dim=-1), torch.stack(attns, dim=1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The ordinary block: (tokens, attention [B, heads, L, L])."""
        out, attn = self.self_attention(self.norm1(x))
        x = x + self._scaled(self.attn.proj(out), self.gamma1)
        x = x + self._scaled(self.mlp(self.norm2(x)), self.gamma2)
        return x, attn

    def _prototype_kv(self, kernel: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        cells = self.norm_in(kernel.permute(0, 2, 3, 1))  # [M, K, K, C]
        kv = self.attn.qkv(cells)
        C = self.dim
        return kv[..., C:2 * C], kv[..., 2 * C:]  # [M, K, K, C] each

    def _finish(self, y: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        z = y + self._scaled(self.attn.proj(attn_out), self.gamma1)
        return z + self._scaled(self.mlp(self.norm2(z)), self.gamma2)

    def filter_patches(self, y: torch.Tensor, kernel: torch.Tensor,
                       hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Released ``forward_kernel_patch`` on the block output ``y`` [B, 1+N, C] -> [B, N, 2C].

        The release takes square grids only; ``hw`` extends the same math to an (h, w) grid.
        """
        B, L, C = y.shape
        h, w = hw if hw is not None else (int(math.isqrt(L - 1)), ) * 2
        d, M = C // self.heads, kernel.shape[0]
        yp = y[:, 1:]
        q_all = self.attn.qkv(self.norm1(yp))[..., :C]
        k, v = self._prototype_kv(kernel)
        outs = []
        for hd in range(self.heads):
            sl = slice(hd * d, (hd + 1) * d)
            scores = released_filter_scores(q_all[..., sl].reshape(B, h, w, d), k[..., sl])
            a = torch.softmax(scores * M**-0.5, dim=-1)  # over the M prototypes
            outs.append(a @ v[..., sl].mean(dim=(1, 2)))
        z = self._finish(yp, torch.cat(outs, dim=-1))
        return self.norm_out_patch(torch.cat([yp, z], dim=-1))

    def filter_cls(self, y: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """Released ``forward_kernel_cls`` on the block output ``y`` -> [B, 2C]."""
        C = self.dim
        d, M = C // self.heads, kernel.shape[0]
        yc = y[:, :1]
        q_all = self.attn.qkv(self.norm1(yc))[..., :C]
        k, v = self._prototype_kv(kernel)
        outs = []
        for hd in range(self.heads):
            sl = slice(hd * d, (hd + 1) * d)
            scores = q_all[..., sl] @ k[..., sl].mean(dim=(1, 2)).t()  # [B, 1, M]
            a = torch.softmax(scores * M**-0.5, dim=-1)
            outs.append(a @ v[..., sl].mean(dim=(1, 2)))
        z = self._finish(yc, torch.cat(outs, dim=-1))
        return self.norm_out_cls(torch.cat([yc, z], dim=-1))[:, 0]

    def forward_kernel(self, x: torch.Tensor, kernel: torch.Tensor
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Released ``forward_kernel``: the block, then the filter on its output.

        Returns (cls [B, 2C], patches [B, N, 2C], attention of the ordinary pass).
        """
        y, attn = self.forward(x)
        return self.filter_cls(y, kernel), self.filter_patches(y, kernel), attn


class _Projector(nn.Module):
    """Released projection head: MLP (last linear without bias), L2-normalise, weight-normed
    prototypes without bias (``weight_g`` = 1)."""

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, num_prototypes: int,
                 nlayers: int = 3) -> None:
        super().__init__()
        layers = [nn.Linear(in_dim, hidden), nn.GELU()]
        for _ in range(nlayers - 2):
            layers += [nn.Linear(hidden, hidden), nn.GELU()]
        layers.append(nn.Linear(hidden, bottleneck, bias=False))
        self.projection_head = nn.Sequential(*layers)
        # weight-normalised linear layer, stored as the release saves it (weight_g, weight_v)
        self.last_layer = nn.Module()
        self.last_layer.weight_g = nn.Parameter(torch.ones(num_prototypes, 1))
        self.last_layer.weight_v = nn.Parameter(torch.randn(num_prototypes, bottleneck) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.projection_head(x), dim=-1)
        v = self.last_layer.weight_v
        weight = self.last_layer.weight_g * v / v.norm(dim=1, keepdim=True)
        return z @ weight.t()


class ReleasedViT(nn.Module):
    """A small released-layout CoTAP ViT (filter in the last block) with its two heads.

    ``state_dict()`` is a checkpoint in the release's ViT layout (no final ``norm``, as the
    release's ``VisionTransformer``); ``filter_norms_in_every_block=False`` keeps the filter's
    LayerNorms in the last block only."""

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 2, hidden: int = 64,
                 patch: int = 16, img_size: int = 64, num_prototypes: int = 8,
                 kernel_size: int = 3, head_hidden: int = 48, bottleneck: int = 16,
                 head_prototypes: Tuple[int, int] = (24, 40), layer_scale: float = 0.0,
                 filter_norms_in_every_block: bool = True) -> None:
        super().__init__()
        self.patch = patch
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, stride=patch)
        grid = img_size // patch
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, dim) * 0.02)
        self.blocks = nn.ModuleList([
            ReleasedBlock(dim, heads, hidden, filtered=filter_norms_in_every_block or i == depth - 1,
                          layer_scale=layer_scale)
            for i in range(depth)
        ])
        self.kernel = nn.Parameter(torch.randn(num_prototypes, dim, kernel_size, kernel_size))
        self.projection_heads = nn.ModuleList([
            _Projector(2 * dim, head_hidden, bottleneck, head_prototypes[0]),
            _Projector(2 * dim, head_hidden, bottleneck, head_prototypes[1]),
        ])

    def tokens_pre_last(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens entering the last block (the released prototype bank pools these)."""
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        for blk in self.blocks[:-1]:
            t = blk(t)[0]
        return t

    def get_last_feature(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Released ``get_last_feature``: CLS [B, 2C] and patches [B, 2C, h, w]."""
        cls, patches, _ = self.blocks[-1].forward_kernel(self.tokens_pre_last(x),
                                                         self.kernel.detach())
        B, N, D = patches.shape
        h = x.shape[-2] // self.patch
        return cls, patches.transpose(1, 2).reshape(B, D, h, N // h)

    def head_outputs(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Patch-head scores [B, N, K0] and CLS-head scores [B, K1]."""
        cls, patches = self.get_last_feature(x)
        patches = patches.flatten(2).transpose(1, 2)
        return dict(patch=self.projection_heads[0](patches), cls=self.projection_heads[1](cls))


def released_training_checkpoint(student: Mapping[str, torch.Tensor],
                                 teacher: Optional[Mapping[str, torch.Tensor]] = None,
                                 extra: Optional[Mapping[str, torch.Tensor]] = None
                                 ) -> Dict[str, Any]:
    """What the release's ``train.py`` (PyTorch Lightning ``ModelCheckpoint``) saves, plain data only.

    Args:
        student: the student ViT's state dict (saved as ``net.model.*``).
        teacher: the EMA teacher's (``net_teacher.model.*``); None leaves it out.
        extra: further ``state_dict`` entries (e.g. ``tester.*`` of the Lightning module).

    Returns:
        ``{'state_dict': ..., 'epoch', 'global_step', 'pytorch-lightning_version',
        'hyper_parameters'}`` (the release pickles its OmegaConf config there; a plain dict here).
    """
    state = {'net.model.' + k: v for k, v in student.items()}
    if teacher is not None:
        state.update({'net_teacher.model.' + k: v for k, v in teacher.items()})
    state.update(extra or {})
    return {'epoch': 0, 'global_step': 10000, 'pytorch-lightning_version': '1.9.0',
            'state_dict': state, 'hyper_parameters': {'cfg': {'model': {'vit_type': 'depth'}}}}

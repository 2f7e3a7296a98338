"""DINO-style projection head used by CoTAP for patch tokens (head 0) and the CLS token (head 1).

CoTAP: "Semantic Concentration for Self-Supervised Dense Representations Learning",
https://arxiv.org/abs/2509.09429 (official code: github.com/KID-7391/CoTAP, which uses DINO's
``DINOHead``: https://github.com/facebookresearch/dino).
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from mmpretrain.registry import MODELS

__all__ = ['DINOProjectionHead']


@MODELS.register_module()
class DINOProjectionHead(BaseModule):
    """MLP -> L2-normalise -> weight-normalised linear layer onto ``num_prototypes`` scores.

    Paper: `Semantic Concentration for Self-Supervised Dense Representations Learning
    <https://arxiv.org/abs/2509.09429>`_: both CoTAP heads are DINO heads on the
    2C-dim tokens of the object-aware filter: ``in_channels -> hidden -> hidden -> bottleneck``
    (GELU between layers), L2-normalisation, then a
    weight-normalised linear ``bottleneck -> num_prototypes`` without bias whose norm ``g`` is
    fixed to 1 (DINO's ``norm_last_layer=True``): the output is the cosine of the bottleneck
    feature with each of the ``num_prototypes`` directions ``weight_v``.

    As in DINO's ``DINOHead``, the MLP's last linear layer has a bias unless
    ``last_mlp_bias=False`` (the released CoTAP heads have none; the CoTAP configs set it). The
    weight-normalised layer never has a bias.

    Patch head (head 0): ``num_prototypes=512``; CLS head (head 1): ``num_prototypes=4096``.

    Args:
        in_channels (int): input width (2C: 768 for ViT-S, 1536 for ViT-B).
        hidden_channels (int): MLP hidden width. Defaults to 2048.
        bottleneck_channels (int): MLP output width. Defaults to 256.
        num_prototypes (int): K, output width. Defaults to 512.
        num_layers (int): number of MLP linear layers (>= 1). Defaults to 3.
        norm_last_layer (bool): fix the weight-norm ``g`` to 1 (DINO default). If False, ``g`` is
            a learnable parameter ``weight_g`` [K, 1] initialised to 1. Defaults to True.
        last_mlp_bias (bool): bias of the MLP's last linear layer. Defaults to True (DINO).
        init_cfg (dict, optional): mmengine init config. Defaults to None (trunc-normal std 0.02,
            zero bias, as DINO; ``weight_v`` keeps PyTorch's default ``nn.Linear`` init).

    Shapes: ``forward(x)``: ``x`` [..., in_channels] -> [..., num_prototypes], values in [-1, 1]
    when ``norm_last_layer``.
    """

    def __init__(self,
                 in_channels: int,
                 hidden_channels: int = 2048,
                 bottleneck_channels: int = 256,
                 num_prototypes: int = 512,
                 num_layers: int = 3,
                 norm_last_layer: bool = True,
                 last_mlp_bias: bool = True,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        for name, val in (('in_channels', in_channels), ('hidden_channels', hidden_channels),
                          ('bottleneck_channels', bottleneck_channels),
                          ('num_prototypes', num_prototypes), ('num_layers', num_layers)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f'{name} must be a positive int, got {val!r}')
        self.in_channels = in_channels
        self.num_prototypes = num_prototypes
        self.norm_last_layer = bool(norm_last_layer)
        layers = []
        dims = [in_channels] + [hidden_channels] * (num_layers - 1) + [bottleneck_channels]
        for i in range(num_layers):
            last = i == num_layers - 1
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=last_mlp_bias or not last))
            if not last:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # weight-normalised last layer: W = g * v / ||v|| (row-wise), no bias
        v = nn.Linear(bottleneck_channels, num_prototypes, bias=False).weight.data
        self.weight_v = nn.Parameter(v.clone())
        if self.norm_last_layer:
            self.weight_g = None
        else:
            self.weight_g = nn.Parameter(torch.ones(num_prototypes, 1))

    def last_layer_weight(self) -> torch.Tensor:
        """The effective last-layer weight [K, bottleneck] (rows of norm ``g``)."""
        w = F.normalize(self.weight_v, dim=1)
        return w if self.weight_g is None else w * self.weight_g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project tokens.

        Args:
            x (Tensor): [..., in_channels].

        Returns:
            Tensor: [..., num_prototypes].
        """
        if x.shape[-1] != self.in_channels:
            raise ValueError(f'x must have last dimension in_channels={self.in_channels}, got '
                             f'shape {tuple(x.shape)}')
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, self.last_layer_weight().to(z.dtype))

"""Per-stage shallow projection head of SCFS (residual bottleneck + MLP, 256-d output).

SCFS: Song et al., "Semantics-Consistent Feature Search for Self-Supervised Visual Representation
Learning", ICCV 2023, https://arxiv.org/abs/2212.06486 (official code: github.com/skyoux/scfs).
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_norm_layer
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS

__all__ = ['SCFSHead']


@MODELS.register_module()
class SCFSHead(BaseModule):
    """Residual bottleneck on a feature map, global average pooling, MLP, L2-normalisation.

    Paper: `Semantics-Consistent Feature Search for Self-Supervised Visual Representation Learning
    <https://arxiv.org/abs/2212.06486>`_. One head per searched backbone stage, in the student and
    (as an EMA copy) in the teacher:

    * residual bottleneck: ``1x1 conv C->mid, norm, ReLU; 3x3 conv mid->mid, norm, ReLU;
      1x1 conv mid->C, norm``; identity added; ReLU;
    * global average pooling;
    * MLP: ``Linear C->hidden, BN1d, ReLU, Linear hidden->out, BN1d``;
    * L2-normalisation (``normalize=True``). The official head has **no prototype layer**: the
      256-d normalised vector itself goes through the DINO-style softmax with temperature
      (:class:`DINOClsLoss`).

    :class:`DINOProjectionHead` (GELU MLP without BN, weight-normalised prototype layer) does not
    match this MLP, so it is not reused here; the SCFS algorithm uses it for the final DINO head.

    Args:
        in_channels (int): C, channels of the stage feature map (512 / 1024 / 2048 for ResNet-50
            layer2 / 3 / 4; the embedding width for a ViT).
        mid_channels (int): bottleneck width. Defaults to 256.
        hidden_channels (int): MLP hidden width. Defaults to 2048.
        out_channels (int): output width. Defaults to 256.
        norm_cfg (dict): norm of the convolutions. Defaults to ``dict(type='BN')``.
        mlp_norm_cfg (dict): norm of the MLP. Defaults to ``dict(type='BN1d')``.
        normalize (bool): L2-normalise the output. Defaults to True.
        init_cfg (dict, optional): Defaults to None (PyTorch default init, as the official code).

    Shapes: ``forward(x)``: [N, in_channels, h, w] -> [N, out_channels]. In training mode the
    batch-norm layers need N >= 2.
    """

    def __init__(self,
                 in_channels: int,
                 mid_channels: int = 256,
                 hidden_channels: int = 2048,
                 out_channels: int = 256,
                 norm_cfg: dict = dict(type='BN'),
                 mlp_norm_cfg: dict = dict(type='BN1d'),
                 normalize: bool = True,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        for name, val in (('in_channels', in_channels), ('mid_channels', mid_channels),
                          ('hidden_channels', hidden_channels), ('out_channels', out_channels)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f'{name} must be a positive int, got {val!r}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.normalize = bool(normalize)
        self.bottleneck = nn.Sequential(
            ConvModule(in_channels, mid_channels, 1, bias=False, norm_cfg=norm_cfg),
            ConvModule(mid_channels, mid_channels, 3, padding=1, bias=False, norm_cfg=norm_cfg),
            ConvModule(mid_channels, in_channels, 1, bias=False, norm_cfg=norm_cfg, act_cfg=None))
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, hidden_channels),
            build_norm_layer(mlp_norm_cfg, hidden_channels)[1],
            nn.ReLU(inplace=True),
            nn.Linear(hidden_channels, out_channels),
            build_norm_layer(mlp_norm_cfg, out_channels)[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project a stage feature map.

        Args:
            x (Tensor): [N, in_channels, h, w].

        Returns:
            Tensor: [N, out_channels] (unit L2 norm when ``normalize``).
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'x must be [N, in_channels={self.in_channels}, h, w], got shape '
                             f'{tuple(x.shape)}')
        y = F.relu(x + self.bottleneck(x))
        z = self.mlp(y.mean(dim=(2, 3)))
        return F.normalize(z, dim=1) if self.normalize else z

"""ViTDet's simple feature pyramid: a multi-scale pyramid from the last feature map of a plain ViT.

ViTDet: Li, Mao, Girshick, He, "Exploring Plain Vision Transformer Backbones for Object Detection",
ECCV 2022, https://arxiv.org/abs/2203.16527 (detectron2 ``modeling/backbone/vit.py`` ``SimpleFeaturePyramid``;
mmdet's ``projects/ViTDet/vitdet/simple_fpn.py``, which is not part of the mmdet wheel).
"""
from typing import List, Optional, Sequence, Tuple, Union

import mmpretrain.models.utils  # noqa: F401  (registers 'LN2d' in mmpretrain's MODELS)
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_norm_layer
from mmdet.registry import MODELS
from mmengine.model import BaseModule

__all__ = ['SimpleFPN']

_NORM_LN2D = dict(type='mmpretrain.LN2d', eps=1e-6)


@MODELS.register_module()
class SimpleFPN(BaseModule):
    """Simple feature pyramid of ViTDet, registered in mmdet's ``MODELS`` (``type='SimpleFPN'``).

    Paper: `Exploring Plain Vision Transformer Backbones for Object Detection
    <https://arxiv.org/abs/2203.16527>`_ (Sec. 3, "simple feature pyramid", Fig. 2c).

    From the single stride-16 map of a plain ViT (``out_type='featmap'``, last layer) it builds
    strides 4 / 8 / 16 / 32, with D = ``in_channels``:

    * 1/4:  ConvTranspose(2x2, s2) D -> D/2, norm, GELU, ConvTranspose(2x2, s2) D/2 -> D/4;
    * 1/8:  ConvTranspose(2x2, s2) D -> D/2;
    * 1/16: identity (D);
    * 1/32: MaxPool(2x2, s2) (D).

    Each level then gets a 1x1 lateral conv and a 3x3 output conv to ``out_channels``, each followed
    by ``norm_cfg`` (LayerNorm over channels in ViTDet; no bias, no activation). There is no
    top-down path (ViTDet found it unnecessary). If ``num_outs`` > 4, the extra levels are made
    like ViTDet's ``LastLevelMaxPool`` (detectron2's P6): max-pool with kernel 1, stride 2 of the
    previous output, i.e. strides 64, 128, ... (mmdet's Mask R-CNN RPN uses 5 levels, 4-64).

    Args:
        in_channels (int): D, channels of the ViT feature map (its ``embed_dims``); must be divisible
            by 4.
        out_channels (int): channels of every output level. Defaults to 256.
        num_outs (int): number of output levels, >= 4. Defaults to 5.
        norm_cfg (dict): norm of the 1/4 deconv branch and of the lateral/output convs. Defaults
            to ``dict(type='mmpretrain.LN2d', eps=1e-6)`` (ViTDet: ``LayerNorm`` over channels,
            eps 1e-6). ``SyncBN`` / ``BN`` / ``GN`` work too.
        act_cfg (dict, optional): activation after the lateral/output convs. Defaults to None
            (ViTDet has none).
        init_cfg (dict | list[dict], optional): Defaults to Xavier-uniform for the ``Conv2d``
            layers, as mmdet's ``FPN`` (ViTDet uses detectron2's ``c2_xavier_fill``, also a uniform
            fan-in init); the transposed convs keep PyTorch's default init, as in ViTDet.

    Shapes:
        input: the ViT feature map [B, D, H, W] (a tensor, or the backbone's 1-tuple of it).
        output: tuple of ``num_outs`` maps; level i is [B, out_channels, H * 4 / 2**i, W * 4 / 2**i]
        for i < 4 (the 1/32 level rounds down: floor(H / 2)), and each extra level halves the
        previous one (ceil, kernel-1 max-pool).
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int = 256,
                 num_outs: int = 5,
                 norm_cfg: Optional[dict] = None,
                 act_cfg: Optional[dict] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        if init_cfg is None:
            init_cfg = dict(type='Xavier', layer='Conv2d', distribution='uniform')
        super().__init__(init_cfg=init_cfg)
        if not isinstance(in_channels, int) or in_channels <= 0 or in_channels % 4 != 0:
            raise ValueError(f'SimpleFPN: in_channels must be a positive int divisible by 4 (the '
                             f'1/4 level has in_channels // 4 channels), got {in_channels!r}')
        if num_outs < 4:
            raise ValueError(f'SimpleFPN: num_outs must be >= 4 (strides 4, 8, 16, 32 + extra '
                             f'max-pooled levels), got {num_outs}')
        if norm_cfg is None:
            norm_cfg = dict(_NORM_LN2D)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_outs = num_outs
        D = in_channels

        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(D, D // 2, kernel_size=2, stride=2),
            build_norm_layer(norm_cfg, D // 2)[1],
            nn.GELU(),
            nn.ConvTranspose2d(D // 2, D // 4, kernel_size=2, stride=2))
        self.fpn2 = nn.Sequential(nn.ConvTranspose2d(D, D // 2, kernel_size=2, stride=2))
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)

        level_channels = (D // 4, D // 2, D, D)
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for c in level_channels:
            self.lateral_convs.append(
                ConvModule(c, out_channels, 1, norm_cfg=norm_cfg, act_cfg=act_cfg, inplace=False))
            self.fpn_convs.append(
                ConvModule(out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg,
                           act_cfg=act_cfg, inplace=False))

    def _check_input(self, inputs: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        x = inputs
        if isinstance(inputs, (tuple, list)):
            if len(inputs) != 1:
                raise ValueError(
                    'SimpleFPN takes the single last-layer ViT map: a tensor or a 1-tuple '
                    f'(backbone out_indices with one index), got a sequence of {len(inputs)} '
                    'maps')
            x = inputs[0]
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f'SimpleFPN expects a feature map [B, C, H, W] (backbone '
                             f"out_type='featmap'), got {shape}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f'SimpleFPN was built with in_channels={self.in_channels}, got a '
                             f'map with {x.shape[1]} channels (shape {tuple(x.shape)})')
        return x

    def forward(self, inputs: Union[torch.Tensor, Sequence[torch.Tensor]]) -> Tuple[torch.Tensor]:
        """Build the pyramid.

        Args:
            inputs (Tensor | Sequence[Tensor]): [B, in_channels, H, W] or a 1-tuple of it.

        Returns:
            tuple[Tensor]: ``num_outs`` maps of ``out_channels`` channels, strides 4, 8, 16, 32,
            64, ... relative to the input map's stride 16.
        """
        x = self._check_input(inputs)
        levels = (self.fpn1(x), self.fpn2(x), self.fpn3(x), self.fpn4(x))
        outs = [fpn_conv(lateral(feat)) for feat, lateral, fpn_conv in
                zip(levels, self.lateral_convs, self.fpn_convs)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)

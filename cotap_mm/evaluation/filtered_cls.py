"""CoTAP's 2C CLS token as an mmpretrain backbone, for ImageNet linear classification configs.

CoTAP's released ImageNet k-NN and linear classification read the CLS token of the object-aware
filter (ordinary || filtered last-block CLS, LayerNorm(2C); `arXiv 2509.09429
<https://arxiv.org/abs/2509.09429>`_); :class:`~cotap_mm.models.backbones.CoTAPFilteredViT` gives the
patch tokens of the same computation, this subclass its CLS token.
"""
from typing import Tuple

import torch
from mmpretrain.registry import MODELS

from cotap_mm.models.backbones.cotap_filtered_vit import CoTAPFilteredViT
from cotap_mm.models.necks.object_prototype_neck import filtered_forward

__all__ = ['CoTAPFilteredCLSViT']


@MODELS.register_module()
class CoTAPFilteredCLSViT(CoTAPFilteredViT):
    """Frozen ViT + object-aware filter whose output is the 2C-dim CLS token.

    Same arguments, weights (``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='' |
    'teacher.')``) and checks (initialised prototypes) as :class:`CoTAPFilteredViT`.
    """

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        """Images [B, 3, H, W] -> ``(cls [B, 2C],)`` (what mmpretrain's classification heads take)."""
        self._check_prototypes('this model was not loaded from a CoTAP checkpoint')
        return (filtered_forward(self.backbone, self.neck, x).cls, )

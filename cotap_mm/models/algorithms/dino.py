"""DINO: self-distillation with no labels, the image-level start CoTAP post-pretrains.

Paper: Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021,
https://arxiv.org/abs/2104.14294 (official code: github.com/facebookresearch/dino). CoTAP
(https://arxiv.org/abs/2509.09429) starts from DINO checkpoints; the demo and the dense benchmark
train a tiny one on generated scenes.

DINO is SCFS's ``L_d`` alone (SCFS = DINO + feature search at several stages), so it is
:class:`~cotap_mm.models.algorithms.scfs.SCFS` without stage heads and stage losses: one
implementation of the multi-crop student / EMA-teacher loss, shared through the registry.
"""
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
from mmpretrain.registry import MODELS

from .scfs import SCFS

__all__ = ['DINO']


@MODELS.register_module()
class DINO(SCFS):
    """DINO multi-crop self-distillation (student / EMA teacher, centred and sharpened teacher).

    ``loss_dino`` is :class:`~cotap_mm.models.losses.DINOClsLoss` between the DINO-head outputs
    of all V student crops (G global, then V - G local; local crops are optional) and the
    teacher's of the G global crops, over pairs of different crops. The teacher is updated by
    :class:`~cotap_mm.engine.hooks.ema_teacher_hook.EMATeacherHook` (official: momentum 0.996 ->
    1, cosine). Views come from ``GeometricMultiView`` + ``PackGeometricViews`` as for SCFS; by
    default the teacher sees the same augmented global crops as the student (official DINO).

    Args:
        backbone (dict): ViT config with ``embed``/``layers``/``final_norm`` (e.g.
            :class:`CoTAPViT`) for ``dino_feature='cls'``; any backbone returning [N, C, h, w]
            maps for ``'gap'``.
        head (dict): :class:`DINOProjectionHead` config (official ViT-S/16: hidden 2048,
            bottleneck 256, 65536 prototypes); ``in_channels`` = the backbone width.
        dino_loss (dict): Defaults to ``dict(type='DINOClsLoss')`` (``out_dim`` = head width;
            official temperatures: student 0.1, teacher 0.04 -> 0.07 warm-up, centre momentum 0.9).
        dino_feature (str): 'cls' (the CLS token after the final norm, DINO ViTs) or 'gap' (global
            average pooling of the last map, DINO ResNets). Defaults to 'cls'.
        teacher_input (str): 'student' (official) or 'clean' (the packed un-jittered copies).
            Defaults to 'student'.
        freeze_last_layer_iters (int): iterations during which the head's last layer gets no
            gradient (official: the first epoch). Defaults to 0.
        data_preprocessor (dict, optional): Defaults to ``SelfSupDataPreprocessor``.
        init_cfg (dict, optional): Defaults to None.
    """

    def __init__(self,
                 backbone: dict,
                 head: dict,
                 dino_loss: dict = dict(type='DINOClsLoss'),
                 dino_feature: str = 'cls',
                 teacher_input: str = 'student',
                 freeze_last_layer_iters: int = 0,
                 data_preprocessor: Optional[Union[dict, nn.Module]] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(backbone=backbone, head=head, stage_head=None, stage_channels=(),
                         dino_loss=dino_loss, stage_global_loss=None, search_loss=None,
                         dino_feature=dino_feature, teacher_input=teacher_input,
                         freeze_last_layer_iters=freeze_last_layer_iters,
                         data_preprocessor=data_preprocessor, init_cfg=init_cfg)

    def extract_feat(self, inputs: Union[torch.Tensor, List[torch.Tensor]]) -> Tuple[torch.Tensor]:
        """Student backbone outputs (mmpretrain convention), e.g. the patch-token maps of a ViT.

        Args:
            inputs (Tensor | list[Tensor]): images [B, 3, H, W] (a list: its first element).

        Returns:
            tuple[Tensor]: the backbone's outputs.
        """
        x = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        out = self.backbone(x)
        return tuple(out) if isinstance(out, (list, tuple)) else (out, )

"""Layer-wise lr decay for mmpretrain ViT backbones inside mmseg / mmdet models.

mmseg's ``LayerDecayOptimizerConstructor`` / ``LearningRateDecayOptimizerConstructor`` only accept
backbones whose class name contains ``BEiT``, ``MAE`` or ``ConvNeXt`` (anything else raises
``NotImplementedError``), so they refuse ``mmpretrain.CoTAPViT`` / ``mmpretrain.VisionTransformer``.
mmpretrain's :class:`~mmpretrain.engine.optimizers.LearningRateDecayOptimWrapperConstructor`
understands the ViT key names (``backbone.layers.N``) through ``VisionTransformer.get_layer_depth``,
but calls ``get_layer_depth`` on the *whole model*, which mmseg's ``EncoderDecoder`` lacks.
:class:`ViTLayerDecayOptimWrapperConstructor` only supplies that function from ``model.backbone``.
"""
import functools
from typing import Callable, List, Optional

from mmpretrain.engine.optimizers import LearningRateDecayOptimWrapperConstructor
from mmpretrain.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

__all__ = ['ViTLayerDecayOptimWrapperConstructor']


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ViTLayerDecayOptimWrapperConstructor(LearningRateDecayOptimWrapperConstructor):
    """Layer-wise lr decay (BEiT / MAE fine-tuning) for a model whose ``backbone`` is an mmpretrain ViT.

    Depths as in mmpretrain's ``VisionTransformer.get_layer_depth`` (= mmseg's BEiT/MAE rule):
    ``cls_token``, ``pos_embed``, ``patch_embed`` -> 0; ``backbone.layers.i`` -> i + 1; every other
    parameter (final norm, neck, heads) -> L + 1, where L = number of blocks. Group lr =
    ``lr * layer_decay_rate ** (L + 1 - depth)``. All ``paramwise_cfg`` keys of the parent work
    (``layer_decay_rate``, ``norm_decay_mult``, ``bias_decay_mult``, ``flat_decay_mult``,
    ``custom_keys`` with ``decay_mult``). Frozen parameters are skipped.

    Use from mmseg/mmdet configs (registered in mmpretrain's registry)::

        optim_wrapper = dict(
            optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
            constructor='mmpretrain.ViTLayerDecayOptimWrapperConstructor',
            paramwise_cfg=dict(layer_decay_rate=0.65, norm_decay_mult=0., bias_decay_mult=0.,
                               custom_keys={'.pos_embed': dict(decay_mult=0.),
                                            '.cls_token': dict(decay_mult=0.)}))

    Args:
        optim_wrapper_cfg (dict): optimizer wrapper config (as the parent); ``optimizer.weight_decay``
            must be given (the parent needs it to build the groups).
        paramwise_cfg (dict, optional): see above (as the parent).
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None) -> None:
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        if self.base_wd is None:
            raise ValueError(f'{type(self).__name__} needs optimizer.weight_decay set explicitly '
                             f'(got optimizer={optim_wrapper_cfg.get("optimizer")}); use 0. for none')

    def add_params(self,
                   params: List[dict],
                   module: nn.Module,
                   prefix: str = '',
                   get_layer_depth: Optional[Callable] = None,
                   **kwargs) -> None:
        if prefix == '' and get_layer_depth is None and not hasattr(module, 'get_layer_depth'):
            backbone = getattr(module, 'backbone', None)
            if backbone is None or not hasattr(backbone, 'get_layer_depth'):
                raise TypeError(
                    f'{type(self).__name__} needs a model with a `backbone` that has '
                    f'`get_layer_depth(param_name, prefix)` (an mmpretrain ViT); got model '
                    f'{type(module).__name__} with backbone {type(backbone).__name__}')
            get_layer_depth = functools.partial(backbone.get_layer_depth, prefix='backbone.')
        super().add_params(params, module, prefix=prefix, get_layer_depth=get_layer_depth, **kwargs)

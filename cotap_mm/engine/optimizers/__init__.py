from .layer_decay_optim_constructor import ViTLayerDecayOptimWrapperConstructor

__all__ = ['ViTLayerDecayOptimWrapperConstructor']

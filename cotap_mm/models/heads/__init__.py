from .dino_projection_head import DINOProjectionHead

__all__ = ['DINOProjectionHead']

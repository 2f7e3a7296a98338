from .dino_projection_head import DINOProjectionHead
from .scfs_head import SCFSHead

__all__ = ['DINOProjectionHead', 'SCFSHead']

from . import transforms  # noqa: F401
from .synthetic_scenes import SyntheticScenes, SyntheticScenesSeg

__all__ = ['SyntheticScenes', 'SyntheticScenesSeg']

"""cotap_mm: dense self-supervised learning for OpenMMLab.

Importing this package registers its modules into mmpretrain's registries
(``mmpretrain.registry.MODELS``, ``TRANSFORMS``, ``DATASETS``, ``HOOKS``, ...), so configs use them
with ``custom_imports=dict(imports=['cotap_mm'], allow_failed_imports=False)``, and mmseg/mmdet
configs as ``type='mmpretrain.<Name>'``. It also installs the checkpoint-loading shim
(:mod:`cotap_mm.utils.checkpoint`).
"""
from .version import __version__
from . import utils  # noqa: F401  (installs the checkpoint shim first)
from . import datasets, engine, evaluation, models  # noqa: F401

__all__ = ['__version__']

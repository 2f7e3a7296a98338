"""cotap_mm: dense self-supervised learning for OpenMMLab.

Importing this package registers its modules into mmpretrain's registries
(``mmpretrain.registry.MODELS``, ``TRANSFORMS``, ``DATASETS``, ``HOOKS``, ...), so configs use them
with ``custom_imports=dict(imports=['cotap_mm'], allow_failed_imports=False)``, and mmseg/mmdet
configs as ``type='mmpretrain.<Name>'``. It also installs the checkpoint-loading shim
(:mod:`cotap_mm.utils.checkpoint`), and makes the package known to OpenMMLab's tools
(:mod:`cotap_mm.openmmlab`): ``cotap_mm::`` config paths, the model index in mmpretrain's
``ModelHub``, ``FeatureExtractor`` on our configs' ``test_pipeline``.
"""
from .version import __version__
from . import utils  # noqa: F401  (installs the checkpoint shim first)
from . import datasets, engine, evaluation, models  # noqa: F401
from .openmmlab import patch_feature_extractor, register_config_scope, register_model_index

register_config_scope()
register_model_index()
patch_feature_extractor()

__all__ = ['__version__']

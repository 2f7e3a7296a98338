"""What OpenMMLab's own tools need to find and use cotap_mm's configs.

* **The ``cotap_mm::`` config scope.** MMEngine resolves ``_base_ = 'cotap_mm::cotap/x.py'`` to
  ``<package>/.mim/configs/cotap/x.py`` only for the packages of its table ``MODULE2PACKAGE``
  (OpenMMLab's own); :func:`register_config_scope` adds cotap_mm and makes MMEngine find the package
  folder of an editable install too (pip keeps its metadata in site-packages and the code in the
  checkout, where MMEngine 0.10's ``get_installed_path`` looks for neither). The dicts such a config
  inherits build through :mod:`cotap_mm.registry`.
* **The model index.** :func:`register_model_index` registers ``model-index.yml`` (one metafile per
  method, ``configs/*/metafile.yml``) in mmpretrain's ``ModelHub``, so ``mmpretrain.list_models
  ('*cotap*')``, ``get_model(name)`` and ``FeatureExtractor(name, ...)`` know our configs.
* **Feature extraction.** mmpretrain's ``FeatureExtractor`` reads its image pipeline from
  ``test_dataloader``, which a pretraining config cannot have (MMEngine's runner then also wants a
  test loop and an evaluator). Our configs carry the pipeline as ``test_pipeline``;
  :func:`patch_feature_extractor` makes ``FeatureExtractor`` use it when there is no test loader.

``setup.py`` fills ``cotap_mm/.mim`` (copies for ``pip install .``, links to the checkout for
``pip install -e .``); :func:`mim_root` falls back to the checkout for a package imported from a
source tree that was never installed.
"""
import logging
import os.path as osp
from typing import Callable, Optional

from mmengine.logging import print_log

PACKAGE = 'cotap_mm'
PACKAGE_DIR = osp.dirname(osp.abspath(__file__))
MODEL_INDEX = 'model-index.yml'

_registered_index: Optional[str] = None


def mim_root() -> Optional[str]:
    """The folder holding ``model-index.yml``, ``configs/`` and ``tools/``.

    ``cotap_mm/.mim`` of an installed package, else the checkout the package is imported from; None
    when neither has them.
    """
    for root in (osp.join(PACKAGE_DIR, '.mim'), osp.dirname(PACKAGE_DIR)):
        if osp.isfile(osp.join(root, MODEL_INDEX)) and osp.isdir(osp.join(root, 'configs')):
            return root
    return None


def _installed_path_with_cotap(original: Callable[[str], str]) -> Callable[[str], str]:
    """Wrap MMEngine's ``get_installed_path``: cotap_mm's folder is the imported package's."""

    def get_installed_path(package: str) -> str:
        if package != PACKAGE:
            return original(package)
        if not osp.isdir(osp.join(PACKAGE_DIR, '.mim', 'configs')):
            print_log(f'{PACKAGE_DIR} has no .mim/configs: `cotap_mm::` configs resolve in an '
                      f'installed package (pip install . or pip install -e . in the checkout)',
                      logger='current', level=logging.WARNING)
        return PACKAGE_DIR

    get_installed_path.__wrapped__ = original  # type: ignore[attr-defined]
    return get_installed_path


def register_config_scope() -> None:
    """Let MMEngine resolve ``cotap_mm::`` config paths (idempotent)."""
    from mmengine.config import config as config_module
    from mmengine.config import utils as config_utils
    config_utils.MODULE2PACKAGE.setdefault(PACKAGE, PACKAGE)
    if not hasattr(config_module.get_installed_path, '__wrapped__'):
        config_module.get_installed_path = _installed_path_with_cotap(
            config_module.get_installed_path)


def register_model_index() -> Optional[str]:
    """Register cotap_mm's ``model-index.yml`` in mmpretrain's ``ModelHub`` (once).

    Returns:
        str | None: the registered index file; None (with a warning) when the package has none.
    """
    global _registered_index
    if _registered_index is not None:
        return _registered_index
    root = mim_root()
    if root is None:
        print_log(f'{PACKAGE_DIR}: no {MODEL_INDEX} in .mim or the checkout; mmpretrain\'s '
                  f'list_models / get_model will not know cotap_mm\'s configs',
                  logger='current', level=logging.WARNING)
        return None
    from mmpretrain.apis import ModelHub
    path = osp.join(root, MODEL_INDEX)
    ModelHub.register_model_index(path, config_prefix=root)
    _registered_index = path
    return path


def _init_pipeline_from_test_pipeline(original: Callable) -> Callable:
    """Wrap ``FeatureExtractor._init_pipeline``: a config without ``test_dataloader`` gives its
    ``test_pipeline``."""

    def _init_pipeline(self, cfg):
        if 'test_dataloader' not in cfg:
            if 'test_pipeline' not in cfg:
                raise KeyError(f'{getattr(cfg, "filename", "the config")}: FeatureExtractor needs '
                               f'test_dataloader.dataset.pipeline or test_pipeline (the image '
                               f'transforms, e.g. LoadImageFromFile, Resize, PackInputs); the '
                               f'config has neither')
            cfg = cfg.copy()
            cfg.test_dataloader = dict(dataset=dict(pipeline=cfg.test_pipeline))
        return original(self, cfg)

    _init_pipeline.__wrapped__ = original  # type: ignore[attr-defined]
    return _init_pipeline


def patch_feature_extractor() -> None:
    """Make mmpretrain's ``FeatureExtractor`` read ``test_pipeline`` (idempotent)."""
    from mmpretrain.apis import FeatureExtractor
    if not hasattr(FeatureExtractor._init_pipeline, '__wrapped__'):
        FeatureExtractor._init_pipeline = _init_pipeline_from_test_pipeline(
            FeatureExtractor._init_pipeline)

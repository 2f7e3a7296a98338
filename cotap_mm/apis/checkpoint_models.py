"""A frozen mmpretrain model of a config and a training checkpoint, and its dense feature sets."""
from typing import Any, Dict, Optional

import torch.nn as nn
from mmengine.config import Config

from cotap_mm.evaluation.frozen_model import dense_feature_extractors
from cotap_mm.evaluation.linear_probe import ExtractFn, build_model_feature_extractor

__all__ = ['build_checkpoint_model', 'build_extractor', 'checkpoint_feature_sets']


def build_checkpoint_model(cfg_path: str, ckpt: Optional[str],
                           overrides: Optional[Dict[str, Any]] = None) -> nn.Module:
    """The whole model of ``cfg_path`` with a training checkpoint's weights, frozen, in eval mode.

    Args:
        cfg_path (str): mmpretrain config with ``model``.
        ckpt (str, optional): checkpoint loaded with mmengine's ``load_checkpoint`` (non-strict:
            the parts a checkpoint lacks are logged); None = random initialisation (seed the
            global RNG first for a reproducible one).
        overrides (dict, optional): ``--cfg-options``-style keys merged into the config first.

    Returns:
        nn.Module: the model, ``requires_grad=False`` everywhere.
    """
    import cotap_mm  # noqa: F401  (registers the modules)
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    cfg = Config.fromfile(cfg_path)
    if overrides:
        cfg.merge_from_dict(overrides)
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    model = MODELS.build(cfg.model)
    if ckpt is not None:
        load_checkpoint(model, ckpt, map_location='cpu')
    for prm in model.parameters():
        prm.requires_grad_(False)
    model.eval()
    return model


def build_extractor(cfg_path: str, ckpt: Optional[str],
                    overrides: Optional[Dict[str, Any]] = None) -> ExtractFn:
    """The model's own dense features (``extract_feat`` when it gives a map, e.g. CoTAP's 2C
    features; else the last-layer patch tokens), see :func:`build_model_feature_extractor`."""
    return build_model_feature_extractor(build_checkpoint_model(cfg_path, ckpt, overrides))


def checkpoint_feature_sets(cfg_path: str, ckpt: Optional[str],
                            overrides: Optional[Dict[str, Any]] = None) -> Dict[str, ExtractFn]:
    """``{'C': plain last-layer tokens}``, plus ``'2C'`` (ordinary || filtered tokens) for a model
    with CoTAP's object-aware filter whose prototypes are initialised
    (:func:`~cotap_mm.evaluation.frozen_model.dense_feature_extractors`)."""
    return dense_feature_extractors(build_checkpoint_model(cfg_path, ckpt, overrides))

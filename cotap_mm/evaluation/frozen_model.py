"""A frozen model from a config and a checkpoint, and its dense feature sets (C and 2C).

Every table of the dense protocols reports a model on its **plain last-layer patch tokens**
(``'C'``: the backbone's final-norm output, :func:`~.linear_probe.build_patch_feature_extractor`)
and, for a model with CoTAP's object-aware filter (a ``neck`` that is an
:class:`~cotap_mm.models.necks.ObjectPrototypeNeck` with k-means-initialised prototypes), on the
**filtered features** too (``'2C'``: ordinary || filtered tokens, ``model.extract_feat``, what
CoTAP's paper probes, `arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_). Comparing one model's
2C features with another's C tokens mixes the method with the feature dimension.
"""
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.config import Config

from .linear_probe import (ExtractFn, build_model_feature_extractor, build_patch_feature_extractor,
                           preprocessor_mean_std)

__all__ = ['FEATURE_SETS', 'load_frozen_model', 'has_object_filter', 'dense_feature_extractors']

FEATURE_SETS = ('C', '2C')
_BRANCHES = ('student', 'teacher')


def has_object_filter(model: nn.Module) -> bool:
    """Whether ``model`` has CoTAP's object-aware filter as ``model.neck``."""
    from cotap_mm.models.necks import ObjectPrototypeNeck
    return isinstance(getattr(model, 'neck', None), ObjectPrototypeNeck)


def _state_dict(checkpoint: str, branch: str) -> Dict[str, torch.Tensor]:
    from mmengine.runner.checkpoint import _load_checkpoint

    from cotap_mm.utils.state_dict import find_state_dict
    sd = find_state_dict(_load_checkpoint(checkpoint, map_location='cpu'), checkpoint)
    if branch == 'teacher':
        teacher = {k[len('teacher.'):]: v for k, v in sd.items() if k.startswith('teacher.')}
        if not teacher:
            raise KeyError(f'{checkpoint}: branch="teacher" but the checkpoint has no teacher.* '
                           f'keys (e.g. {sorted(sd)[:3]}); use branch="student"')
        sd = teacher
    return sd


def load_frozen_model(config: Union[str, Config],
                      checkpoint: Optional[str],
                      branch: str = 'student',
                      cfg_options: Optional[dict] = None,
                      device: Union[str, torch.device] = 'cpu') -> nn.Module:
    """Build ``config``'s mmpretrain model, load the parts the features use, freeze it.

    The ``backbone.*`` tensors (and ``neck.*`` for a model with the object-aware filter) of the
    checkpoint are loaded; every such tensor of the model must be in the checkpoint (otherwise a
    ``KeyError`` lists the missing ones), shapes must match (mmpretrain's load hooks resize a ViT's
    position embedding). Other parts (heads, queues) keep their initial values: no feature uses
    them.

    Args:
        config (str | Config): mmpretrain config with ``model``.
        checkpoint (str, optional): checkpoint file (``state_dict`` / ``model`` entry or bare; a
            ``module.`` prefix is dropped); None = random initialisation.
        branch (str): ``'student'`` (default: ``backbone.*`` / ``neck.*``, also what
            ``publish_model.py`` writes) or ``'teacher'`` (``teacher.backbone.*`` /
            ``teacher.neck.*``
            of a CoTAP / DINO training checkpoint, loaded into the same slots).
        cfg_options (dict, optional): ``--cfg-options``-style overrides merged into the config.
        device (str | torch.device): Defaults to 'cpu'.

    Returns:
        nn.Module: the model in eval mode, ``requires_grad=False`` everywhere, on ``device``.
    """
    from mmengine.registry import init_default_scope
    from mmengine.utils import import_modules_from_strings

    import cotap_mm  # noqa: F401  (registers the modules)
    if branch not in _BRANCHES:
        raise ValueError(f'branch must be one of {_BRANCHES}, got {branch!r}')
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('custom_imports', None):
        import_modules_from_strings(**cfg.custom_imports)
    if 'model' not in cfg:
        raise KeyError(f'{getattr(cfg, "filename", config)}: the config has no model')
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    model_cfg = cfg.model.copy()
    if isinstance(model_cfg.get('backbone'), dict):
        model_cfg['backbone'] = dict(model_cfg['backbone'])
        model_cfg['backbone'].pop('init_cfg', None)  # the checkpoint below is the weights
    model = MODELS.build(model_cfg)
    if checkpoint is not None:
        sd = _state_dict(checkpoint, branch)
        parts = ('backbone.', 'neck.') if has_object_filter(model) else ('backbone.', )
        own = {k for k in model.state_dict() if k.startswith(parts)}
        missing = sorted(own - set(sd))
        if missing:
            raise KeyError(f'{checkpoint} ({branch}): {len(missing)} of the model\'s {len(own)} '
                           f'{"/".join(p + "*" for p in parts)} tensors are missing, e.g. '
                           f'{missing[:5]}; checkpoint keys look like {sorted(sd)[:5]}')
        model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    model.to(device)
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    return model


def dense_feature_extractors(model: nn.Module,
                             features: Sequence[str] = ('auto', )) -> Dict[str, ExtractFn]:
    """The feature sets of ``model`` by name: ``'C'`` always, ``'2C'`` with the filter.

    Args:
        model (nn.Module): a frozen model (:func:`load_frozen_model`).
        features (Sequence[str]): names among :data:`FEATURE_SETS`, or ``('auto', )`` (default):
            ``'C'``, plus ``'2C'`` when the model has the object-aware filter with initialised
            prototypes.

    Returns:
        dict: name -> ``extract(images [B, 3, H, W] 0-255 RGB) -> [B, D, h, w]``.

    Raises:
        ValueError: ``'2C'`` asked of a model without the filter or with uninitialised
            prototypes, or an unknown name.
    """
    names: List[str] = list(features)
    if names == ['auto']:
        names = ['C']
        if has_object_filter(model) and bool(model.neck.prototypes_initialized):
            names.append('2C')
    out: Dict[str, ExtractFn] = {}
    for name in names:
        if name == 'C':
            out[name] = build_patch_feature_extractor(model, *preprocessor_mean_std(model))
        elif name == '2C':
            if not has_object_filter(model):
                raise ValueError(f'2C features need the object-aware filter (model.neck an '
                                 f'ObjectPrototypeNeck); {type(model).__name__} has none')
            if not bool(model.neck.prototypes_initialized):
                raise ValueError('2C features: the filter\'s prototypes were never initialised '
                                 '(neck.prototypes_initialized is False: a checkpoint from '
                                 'before CoTAP\'s k-means, or no checkpoint)')
            out[name] = build_model_feature_extractor(model)
        else:
            raise ValueError(f"features must be 'auto' or among {FEATURE_SETS}, got {name!r}")
    return out

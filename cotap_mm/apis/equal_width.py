"""The equal-width control of CoTAP's 2C features: a baseline with an untrained object-aware filter.

CoTAP (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_) is probed on 2C-dim features
(ordinary || filtered last-block tokens) where a baseline ViT gives C-dim tokens. The control built
here gives the baseline the same filter architecture: its backbone is put into CoTAP's model
(:class:`~cotap_mm.models.algorithms.CoTAP` with :class:`~cotap_mm.models.necks.ObjectPrototypeNeck`),
the filter's prototypes are set by CoTAP's own k-means on a bank of the baseline's pooled tokens
(the tokens entering the last block, K x K average-pooled per image, as CoTAP's bank), and nothing
is trained. CoTAP's 2C against this control's 2C compares methods at equal feature width.
"""
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from cotap_mm.evaluation.linear_probe import (images_to_tensor, normalize_images,
                                              preprocessor_mean_std)
from .checkpoint_models import build_checkpoint_model

__all__ = ['prototype_bank', 'load_backbone_only', 'equal_width_control']


@torch.no_grad()
def prototype_bank(model: nn.Module, images: np.ndarray, batch_size: int = 16) -> torch.Tensor:
    """Bank samples ``[S, C, K, K]`` of a CoTAP-layout model: the patch tokens entering its last
    block, average-pooled to the filter's K x K (``pool_bank_samples``), one sample per image.

    Args:
        model (nn.Module): a model with ``backbone.forward_pre_last`` and an ObjectPrototypeNeck
            ``neck``.
        images (np.ndarray): ``[S, H, W, 3]`` uint8 RGB.
        batch_size (int): Defaults to 16.
    """
    from cotap_mm.models.necks.prototype_ops import pool_bank_samples
    mean, std = preprocessor_mean_std(model)
    x_all = images_to_tensor(images)
    device = next(model.parameters()).device
    samples = []
    for s in range(0, x_all.shape[0], batch_size):
        x = normalize_images(x_all[s:s + batch_size].to(device), mean, std)
        tokens, hw = model.backbone.forward_pre_last(x)
        samples.append(pool_bank_samples(tokens[:, 1:].float(), hw, model.neck.kernel_size))
    return torch.cat(samples)


def load_backbone_only(model: nn.Module, checkpoint: str) -> None:
    """Load the ``backbone.*`` tensors of ``checkpoint`` into ``model.backbone``, strictly.

    Raises:
        KeyError: the checkpoint misses backbone tensors of the model, or has none.
    """
    from mmengine.runner.checkpoint import _load_checkpoint

    from cotap_mm.utils.state_dict import find_state_dict
    sd = find_state_dict(_load_checkpoint(checkpoint, map_location='cpu'), checkpoint)
    own = model.backbone.state_dict()
    sub = {k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}
    missing = sorted(set(own) - set(sub))
    if missing:
        raise KeyError(f'{checkpoint}: {len(missing)} of the {len(own)} backbone tensors of the '
                       f'control model are missing (e.g. {missing[:3]}); checkpoint keys look '
                       f'like {sorted(sd)[:3]}')
    model.backbone.load_state_dict({k: sub[k] for k in own}, strict=True)


def equal_width_control(filter_cfg: str, backbone_ckpt: str, bank_images: np.ndarray,
                        overrides: Optional[Dict[str, Any]] = None) -> nn.Module:
    """A baseline's backbone inside CoTAP's model, its filter k-means-initialised, never trained.

    Args:
        filter_cfg (str): a CoTAP config (its backbone must match the baseline's); the filter's
            size (M prototypes of K x K), ``bank_size``, ``kmeans_iters`` and ``kmeans_seed`` are
            taken from it. Seed the global RNG first: the filter's LayerNorms keep their initial
            values (weight 1, bias 0) and the prototypes are overwritten, so only unused parts
            (heads) depend on it.
        backbone_ckpt (str): the baseline's checkpoint (``backbone.*`` keys).
        bank_images (np.ndarray): ``[S, H, W, 3]`` uint8 RGB; the first ``bank_size`` of them
            fill the bank (at least M are needed).
        overrides (dict, optional): config overrides.

    Returns:
        nn.Module: the frozen model; ``model.extract_feat`` gives its 2C features.
    """
    model = build_checkpoint_model(filter_cfg, None, overrides)
    if not hasattr(model, 'neck') or not hasattr(model.neck, 'init_prototypes_'):
        raise TypeError(f'{filter_cfg}: the equal-width control needs a model with the '
                        f'object-aware filter (neck ObjectPrototypeNeck), got '
                        f'{type(model).__name__}')
    load_backbone_only(model, backbone_ckpt)
    bank_size = int(getattr(model, 'bank_size', len(bank_images)))
    bank = prototype_bank(model, bank_images[:bank_size])
    model.neck.init_prototypes_(bank, iters=int(getattr(model, 'kmeans_iters', 3000)),
                                seed=int(getattr(model, 'kmeans_seed', 0)))
    return model

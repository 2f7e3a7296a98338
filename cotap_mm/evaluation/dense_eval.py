"""One call for the dense evaluation of a frozen feature extractor: linear probe + over-dispersion."""
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch

from cotap_mm.datasets.synthetic_scenes import generate_scene, scene_seed
from .dispersion import dispersion_stats, global_instance_ids, patch_majority_labels
from .linear_probe import dense_linear_probe

ExtractFn = Callable[[torch.Tensor], torch.Tensor]


def synthetic_probe_data(split: str, num: int, seed: int = 0, image_size: int = 96,
                         num_classes: int = 8) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``num`` generated scenes of ``split``: RGB images ``[n,S,S,3]``, class masks, instance maps."""
    imgs, masks, insts = [], [], []
    for i in range(num):
        img, mask, inst = generate_scene(scene_seed(seed, split, i), size=image_size,
                                         num_classes=num_classes, return_instances=True)
        imgs.append(img)
        masks.append(mask)
        insts.append(inst)
    return np.stack(imgs), np.stack(masks), np.stack(insts)


def feature_dispersion(feats: torch.Tensor, masks: torch.Tensor,
                       instances: Optional[np.ndarray] = None) -> Dict[str, float]:
    """:func:`dispersion_stats` of patch features ``[n, C, h, w]``, each patch labelled by the
    majority class (and instance, when ``instances`` ``[n, H, W]`` are given) of its pixels in
    ``masks`` ``[n, H, W]``."""
    n, c, h, w = feats.shape
    flat = feats.permute(0, 2, 3, 1).reshape(-1, c).cpu()
    labels = patch_majority_labels(masks.cpu(), (h, w)).reshape(-1)
    inst_ids = None
    if instances is not None:
        inst_ids = global_instance_ids(patch_majority_labels(instances, (h, w))).reshape(-1)
    return dispersion_stats(flat, labels, inst_ids)


def dense_evaluation(extract: ExtractFn,
                     train_data: Tuple[np.ndarray, np.ndarray],
                     val_data: Tuple[np.ndarray, np.ndarray],
                     num_classes: int,
                     val_instances: Optional[np.ndarray] = None,
                     **probe_kwargs: Any) -> Dict[str, Any]:
    """Frozen linear probe mIoU on ``val_data`` and the over-dispersion of the val patch features.

    Args:
        extract: ``images [B,3,H,W] (0-255 RGB) -> features [B,C,h,w]``, frozen.
        train_data / val_data: ``(images [n,H,W,3] uint8 RGB, masks [n,H,W])``.
        num_classes (int): classes of the masks (background included).
        val_instances (np.ndarray, optional): instance maps ``[n,H,W]`` for the per-instance
            dispersion.
        **probe_kwargs: passed to :func:`dense_linear_probe` (epochs, lr, batch_size, seed, ...).

    Returns:
        dict: ``mIoU``, ``pixel_acc``, ``mAcc``, ``epoch``, ``per_class_iou`` (from the probe),
        ``dispersion`` (:func:`dispersion_stats` on val patches labelled by majority class),
        ``feature_shape`` ``[C, h, w]`` and ``val_feats`` ``[n, C, h, w]``.
    """
    res = dense_linear_probe(extract, train_data, val_data, num_classes=num_classes,
                             return_features=True, **probe_kwargs)
    val_feats = res.pop('val_feats')
    val_masks = res.pop('val_masks')
    res.pop('probe')
    res.pop('train_feats', None)
    res.pop('train_masks', None)
    n, c, h, w = val_feats.shape
    res['dispersion'] = feature_dispersion(val_feats, val_masks, val_instances)
    res['feature_shape'] = [c, h, w]
    res['val_feats'] = val_feats
    return res

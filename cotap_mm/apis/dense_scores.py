"""Every dense protocol on one frozen feature set: linear probe, overclustering, NN retrieval.

The protocols are the pure functions of :mod:`cotap_mm.evaluation` (``linear_probe``,
``overclustering``, ``nn_retrieval``, ``dispersion``); this module runs them on features extracted
once, with one settings object, for ``tools/analysis_tools/score_checkpoint.py``, the demo and the
dense benchmark.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from cotap_mm.evaluation.dense_eval import feature_dispersion
from cotap_mm.evaluation.linear_probe import (ExtractFn, evaluate_linear_probe, extract_features,
                                              fit_linear_probe)
from cotap_mm.evaluation.nn_retrieval import nn_retrieval_eval
from cotap_mm.evaluation.overclustering import overclustering_eval

__all__ = ['PROTOCOLS', 'DenseProtocolSettings', 'score_cached_features', 'score_extractor']

PROTOCOLS = ('linear', 'overclustering', 'nn')


@dataclass
class DenseProtocolSettings:
    """Settings of the dense protocols.

    Args:
        protocols: which of :data:`PROTOCOLS` to run.
        seed: seed of the probe, the k-means and the memory sampling.
        batch_size: extraction and probe batch size.
        linear_epochs / linear_lr: the 1x1-conv probe (Adam, constant lr).
        clusters: K of the majority-matched overclustering runs.
        hungarian: also K = number of classes with Hungarian matching.
        kmeans_iters / kmeans_restarts: Lloyd iterations and restarts.
        nn_k / nn_temperature / memory_size: NN retrieval (memory cap None = every labelled
            training patch).
        device: where features are extracted and scored (None: the extractor's).
    """
    protocols: Sequence[str] = PROTOCOLS
    seed: int = 0
    batch_size: int = 16
    linear_epochs: int = 10
    linear_lr: float = 3e-3
    clusters: Sequence[int] = field(default_factory=lambda: (100, 300, 500))
    hungarian: bool = True
    kmeans_iters: int = 100
    kmeans_restarts: int = 1
    nn_k: int = 30
    nn_temperature: float = 0.02
    memory_size: Optional[int] = None
    device: Optional[str] = None

    def __post_init__(self) -> None:
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown:
            raise ValueError(f'unknown protocols {unknown}; expected among {PROTOCOLS}')


def _summary(res: Dict[str, Any]) -> Dict[str, Any]:
    return dict(mIoU=res['mIoU'], pixel_acc=res['pixel_acc'], mAcc=res['mAcc'],
                per_class_iou=[None if np.isnan(v) else float(v) for v in res['per_class_iou']])


def score_cached_features(train_f: torch.Tensor, train_m: torch.Tensor, val_f: torch.Tensor,
                          val_m: torch.Tensor, num_classes: int,
                          settings: DenseProtocolSettings) -> Dict[str, Any]:
    """Every protocol of ``settings`` on one feature set's cached features.

    Args:
        train_f / val_f: ``[N, D, h, w]`` features of the training (probe / memory) and
            validation images; train_m / val_m: their ``[N, H, W]`` labels (255 = ignore).
        num_classes (int): classes of the labels.
        settings (DenseProtocolSettings): what to run.

    Returns:
        dict: ``linear`` / ``nn`` summaries (``mIoU``, ``pixel_acc``, ``mAcc``,
        ``per_class_iou``; NN also ``memory_entries``, ``k``, ``temperature``) and
        ``overclustering`` ``{'hungarian_K<C>' | 'majority_K<K>': summary}``, for the protocols
        asked.
    """
    s = settings
    out: Dict[str, Any] = {}
    if 'linear' in s.protocols:
        probe = fit_linear_probe(train_f, train_m, num_classes, s.linear_epochs, s.linear_lr,
                                 s.batch_size, seed=s.seed)
        out['linear'] = _summary(evaluate_linear_probe(probe, val_f, val_m, num_classes,
                                                       batch_size=s.batch_size))
    if 'overclustering' in s.protocols:
        runs = [('hungarian', num_classes)] if s.hungarian else []
        runs += [('majority', k) for k in s.clusters]
        out['overclustering'] = {}
        for matching, k in runs:
            res = overclustering_eval(val_f, val_m, num_classes, k, matching, seed=s.seed,
                                      iters=s.kmeans_iters, n_init=s.kmeans_restarts)
            out['overclustering'][f'{matching}_K{k}'] = _summary(res)
    if 'nn' in s.protocols:
        res = nn_retrieval_eval(train_f, train_m, val_f, val_m, num_classes, s.memory_size,
                                s.nn_k, s.nn_temperature, seed=s.seed)
        out['nn'] = dict(_summary(res), memory_entries=res['memory_entries'], k=s.nn_k,
                         temperature=s.nn_temperature)
    return out


def score_extractor(extract: ExtractFn, train: Tuple[np.ndarray, np.ndarray],
                    val: Tuple[np.ndarray, np.ndarray], num_classes: int,
                    settings: DenseProtocolSettings,
                    val_instances: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """Extract one feature set of ``train`` / ``val`` once and score it with every protocol.

    Args:
        extract: frozen ``images [B, 3, H, W] (0-255 RGB) -> [B, D, h, w]``.
        train / val: ``(images [N, H, W, 3] uint8 RGB, masks [N, H, W])``.
        num_classes (int): classes of the masks.
        settings (DenseProtocolSettings): what to run.
        val_instances (np.ndarray, optional): ``[N, H, W]`` instance maps for the instance
            dispersion.

    Returns:
        dict: :func:`score_cached_features`'s keys, ``dispersion``
        (:func:`~cotap_mm.evaluation.dense_eval.feature_dispersion` of the val features),
        ``feature_shape`` ``[D, h, w]`` and ``val_feats`` ``[N, D, h, w]``.
    """
    s = settings
    tr_f, tr_m = extract_features(extract, (train[0], train[1]), s.batch_size, s.device, 'train')
    va_f, va_m = extract_features(extract, (val[0], val[1]), s.batch_size, s.device, 'val')
    out = score_cached_features(tr_f, tr_m, va_f, va_m, num_classes, s)
    out['dispersion'] = feature_dispersion(va_f, va_m, val_instances)
    out['feature_shape'] = list(va_f.shape[1:])
    out['val_feats'] = va_f
    return out

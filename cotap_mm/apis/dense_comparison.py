"""Rows of the demo's and the dense benchmark's tables: a model scored on each of its feature sets.

A row is one model on one feature set: ``'C'`` (plain last-layer tokens, every model) or ``'2C'``
(ordinary || filtered tokens of CoTAP's object-aware filter: CoTAP itself, and the equal-width
control of :mod:`.equal_width`). Compare rows of equal width: C with C, 2C with 2C.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from cotap_mm.evaluation.dense_eval import dense_evaluation
from cotap_mm.evaluation.frozen_model import dense_feature_extractors
from cotap_mm.evaluation.linear_probe import build_model_feature_extractor
from .checkpoint_models import build_checkpoint_model, build_extractor
from .dense_scores import DenseProtocolSettings, score_extractor
from .equal_width import equal_width_control

__all__ = ['SCENE_CLASSES', 'CLAIM_NOTE', 'comparison_pairs', 'probe_checkpoint', 'dense_row',
           'protocol_arg_error',
           'score_checkpoint_rows',
           'score_equal_width_control', 'oc_key']

SCENE_CLASSES = 9  # the generated scenes' 8 object classes + background
Data = Tuple[np.ndarray, np.ndarray, np.ndarray]  # images, masks, instances


def probe_checkpoint(cfg_path: str, ckpt: Optional[str], train: Sequence[np.ndarray],
                     val: Sequence[np.ndarray], epochs: int, lr: float, seed: int,
                     overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Frozen linear probe mIoU and over-dispersion of a model's own features (2C for CoTAP).

    ``train`` / ``val``: :func:`~cotap_mm.evaluation.synthetic_probe_data` triples (images,
    masks, instances) of the generated scenes; ``ckpt`` None = random init; ``seed`` seeds the
    model's init and the probe. Returns :func:`dense_evaluation`'s dict (``val_feats`` included).
    """
    torch.manual_seed(seed)
    return dense_evaluation(build_extractor(cfg_path, ckpt, overrides), train[:2], val[:2],
                            SCENE_CLASSES, val_instances=val[2], epochs=epochs, lr=lr, seed=seed)


def protocol_arg_error(oc_clusters: int, probe_train: int, nn_k: int, nn_temperature: float,
                       filter_cfg: Optional[str] = None) -> Optional[str]:
    """What is wrong with the protocol settings of the demo / the benchmark, or None.

    ``filter_cfg``: the CoTAP config of the equal-width control, whose prototype bank is filled
    from the ``probe_train`` training scenes (at least its M prototypes are needed); None: no
    equal-width control.
    """
    if oc_clusters < SCENE_CLASSES:
        return (f'--oc-clusters must be >= the {SCENE_CLASSES} classes of the generated scenes '
                f'(majority matching), got {oc_clusters}')
    if nn_k < 1 or not nn_temperature > 0:
        return f'--nn-k must be >= 1 and --nn-temperature > 0, got {nn_k} and {nn_temperature}'
    if filter_cfg is not None:
        from mmengine.config import Config
        m = Config.fromfile(filter_cfg).model.neck.num_prototypes
        if probe_train < m:
            return (f'--probe-train must be >= {m}: the equal-width control fills the '
                    f"prototype bank of its filter ({m} prototypes) from the probe's training "
                    f'scenes, got {probe_train}')
    return None


def oc_key(settings: DenseProtocolSettings) -> str:
    """The overclustering run the tables report: the first majority K (else Hungarian)."""
    if settings.clusters:
        return f'majority_K{settings.clusters[0]}'
    return f'hungarian_K{SCENE_CLASSES}'


def dense_row(name: str, features: str, res: Dict[str, Any],
              settings: DenseProtocolSettings) -> Dict[str, Any]:
    """One table row (mIoU and pixel accuracy as fractions) from :func:`score_extractor`'s dict."""
    nan = float('nan')
    oc = res.get('overclustering', {}).get(oc_key(settings), {})
    return dict(name=name, features=features, mIoU=res.get('linear', {}).get('mIoU', nan),
                pixel_acc=res.get('linear', {}).get('pixel_acc', nan),
                oc_mIoU=oc.get('mIoU', nan), nn_mIoU=res.get('nn', {}).get('mIoU', nan),
                dispersion=res['dispersion'], feature_shape=res['feature_shape'],
                protocols={k: res[k] for k in ('linear', 'overclustering', 'nn') if k in res})


def score_checkpoint_rows(name: str, cfg_path: str, ckpt: Optional[str], train: Data, val: Data,
                          settings: DenseProtocolSettings,
                          overrides: Optional[Dict[str, Any]] = None
                          ) -> List[Tuple[Dict[str, Any], torch.Tensor]]:
    """A checkpoint scored on C, and on 2C when it has the object-aware filter.

    The global RNG is seeded with ``settings.seed`` before the model is built (random init).

    Returns:
        list: ``(row, val_feats)`` per feature set, C first.
    """
    torch.manual_seed(settings.seed)
    model = build_checkpoint_model(cfg_path, ckpt, overrides)
    out = []
    for features, extract in dense_feature_extractors(model).items():
        res = score_extractor(extract, train[:2], val[:2], SCENE_CLASSES, settings, val[2])
        out.append((dense_row(name, features, res, settings), res['val_feats']))
    return out


def score_equal_width_control(name: str, filter_cfg: str, control_ckpt: str, train: Data,
                              val: Data, settings: DenseProtocolSettings,
                              overrides: Optional[Dict[str, Any]] = None
                              ) -> Tuple[Dict[str, Any], torch.Tensor]:
    """The control's 2C features through an untrained, k-means-initialised filter
    (:func:`equal_width_control`, bank from the probe's training images), scored."""
    torch.manual_seed(settings.seed)
    model = equal_width_control(filter_cfg, control_ckpt, train[0], overrides)
    res = score_extractor(build_model_feature_extractor(model), train[:2], val[:2],
                          SCENE_CLASSES, settings, val[2])
    return dense_row(name, '2C', res, settings), res['val_feats']


CLAIM_NOTE = ('The comparisons that carry a claim are between features of equal width: CoTAP against '
              'the DINO control on plain last-layer tokens (C vs C), and CoTAP\'s 2C features '
              'against the equal-width control (the control\'s backbone with the same object-aware '
              'filter, prototypes k-means-initialised on its own tokens, never trained: 2C vs 2C). '
              'CoTAP 2C against the control\'s C mixes the method with the feature width and is '
              'shown for reference only.')


def comparison_pairs(start: str, control: str, equal_width: str,
                     cotap: str) -> List[Tuple[str, str, str]]:
    """``(title, label a, label b)`` of the paired differences the tables report, given the model
    names of the start, the control, the equal-width control and CoTAP (labels ``'name [C]'``)."""
    return [
        ('CoTAP - control, C vs C', f'{cotap} [C]', f'{control} [C]'),
        ('CoTAP - equal-width control, 2C vs 2C', f'{cotap} [2C]', f'{equal_width} [2C]'),
        ('CoTAP - start, C vs C', f'{cotap} [C]', f'{start} [C]'),
        ('equal-width control 2C - control C (what the filter alone gives)',
         f'{equal_width} [2C]', f'{control} [C]'),
        ('CoTAP 2C - control C (unequal width, reference only)', f'{cotap} [2C]',
         f'{control} [C]'),
    ]

"""Weighted k-NN classification on frozen CLS features (the DINO / CoTAP ImageNet k-NN protocol).

Protocol (DINO, `arXiv 2104.14294 <https://arxiv.org/abs/2104.14294>`_, ``eval_knn.py``; reported
by CoTAP, `arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_): the CLS token of every training
and validation image, L2-normalised; every validation image takes its ``k`` most cosine-similar
training images; neighbour ``j`` votes for its class with weight ``exp(sim_j / T)``; the classes are
ranked by their summed weights; top-1 / top-5 accuracy. DINO uses ``k = 20``, ``T = 0.07``.

The vote here is :func:`~.nn_retrieval.knn_vote` (``softmax(sim / T)`` over the ``k`` neighbours:
DINO's weights divided by their per-image sum, which changes no ranking) on the blockwise exact
search :func:`~.nn_retrieval.topk_cosine`. :func:`knn_sweep` scores a grid of ``k`` and ``T`` and
names the best, **selected on the validation set it is scored on** (what the released CoTAP code
does): an optimistic number, reported as such.
"""
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from .linear_probe import last_layer_output, normalize_images, preprocessor_mean_std
from .nn_retrieval import knn_vote, topk_cosine

ArrayLike = Union[np.ndarray, torch.Tensor]

__all__ = ['build_cls_feature_extractor', 'knn_scores', 'knn_accuracy', 'knn_sweep',
           'SWEEP_SELECTION']

#: what :func:`knn_sweep`'s ``best`` was selected on
SWEEP_SELECTION = ('validation set: k and T chosen on the images they are scored on '
                   '(optimistic, as the released CoTAP code)')


def build_cls_feature_extractor(model: nn.Module,
                                features: str = 'C') -> Callable[[torch.Tensor], torch.Tensor]:
    """Frozen CLS features ``[B, D]`` of an mmpretrain model.

    Args:
        model (nn.Module): the model (with ``backbone``; a ``data_preprocessor`` with ``mean`` /
            ``std`` normalises the 0-255 RGB images).
        features (str): ``'C'`` (default): the backbone's last-layer CLS token after the final
            norm; ``'2C'``: CoTAP's CLS of the object-aware filter (ordinary || filtered, its own
            LayerNorm), for a model whose ``neck`` is an ``ObjectPrototypeNeck`` with initialised
            prototypes.

    Returns:
        Callable: ``extract(images [B, 3, H, W] float 0-255 RGB) -> [B, D]``, eval mode and
        ``no_grad``; the model's mode is restored.
    """
    from .frozen_model import has_object_filter
    if features not in ('C', '2C'):
        raise ValueError(f"features must be 'C' or '2C', got {features!r}")
    if features == '2C' and not (has_object_filter(model)
                                 and bool(model.neck.prototypes_initialized)):
        raise ValueError('2C CLS features need the object-aware filter with initialised '
                         'prototypes (model.neck an ObjectPrototypeNeck, '
                         'neck.prototypes_initialized True)')
    mean, std = preprocessor_mean_std(model)
    backbone = getattr(model, 'backbone', model)

    @torch.no_grad()
    def extract(images: torch.Tensor) -> torch.Tensor:
        x = normalize_images(images.to(next(model.parameters()).device), mean, std)
        was_training = model.training
        model.eval()
        try:
            if features == '2C':
                tokens, hw = backbone.forward_pre_last(x)
                out, _ = model.neck(tokens, hw, backbone.last_block)
            else:
                out = last_layer_output(backbone, x, 'cls_token')
        finally:
            model.train(was_training)
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise TypeError(f'the CLS features must be [B, D], got '
                            f'{tuple(getattr(out, "shape", ()))}')
        return out

    return extract


def _check(train_feats: ArrayLike, train_labels: ArrayLike,
           num_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    f = torch.as_tensor(train_feats)
    y = torch.as_tensor(train_labels)
    if f.ndim != 2 or not f.is_floating_point():
        raise ValueError(f'train_feats must be a float [N, D] tensor, got {tuple(f.shape)}')
    if y.ndim != 1 or y.shape[0] != f.shape[0] or y.is_floating_point():
        raise ValueError(f'train_labels must be an integer [N] tensor with N={f.shape[0]}, got '
                         f'{tuple(y.shape)} {y.dtype}')
    if y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f'train_labels must be in [0, {num_classes}), got range '
                         f'[{int(y.min())}, {int(y.max())}]')
    return f, y.long()


def knn_scores(train_feats: ArrayLike, train_labels: ArrayLike, query_feats: ArrayLike,
               num_classes: int, k: int = 20, temperature: float = 0.07,
               query_chunk: int = 1024, memory_chunk: int = 131072) -> torch.Tensor:
    """Class scores ``[n, C]`` of the weighted k-NN vote (rows sum to 1).

    Args:
        train_feats (Tensor): ``[N, D]`` CLS features of the training images.
        train_labels (Tensor): ``[N]`` classes in ``[0, C)``.
        query_feats (Tensor): ``[n, D]``.
        num_classes (int): C.
        k (int): neighbours. Defaults to 20.
        temperature (float): T. Defaults to 0.07.
        query_chunk / memory_chunk: block sizes of :func:`~.nn_retrieval.topk_cosine`.
    """
    f, y = _check(train_feats, train_labels, num_classes)
    sims, idx = topk_cosine(torch.as_tensor(query_feats), f, k, query_chunk, memory_chunk)
    return knn_vote(sims, y.to(idx.device)[idx], num_classes, temperature)


def _accuracy(scores: torch.Tensor, labels: torch.Tensor, top: Sequence[int]) -> Dict[str, float]:
    out = {}
    for t in top:
        pred = scores.topk(min(t, scores.shape[1]), dim=1).indices
        out[f'top{t}'] = float((pred == labels.to(pred.device)[:, None]).any(1).double().mean())
    return out


def knn_accuracy(train_feats: ArrayLike, train_labels: ArrayLike, val_feats: ArrayLike,
                 val_labels: ArrayLike, num_classes: int, k: int = 20, temperature: float = 0.07,
                 top: Sequence[int] = (1, 5), **chunks: int) -> Dict[str, Any]:
    """Top-1 / top-5 accuracy of the weighted k-NN classifier on ``val``.

    Args:
        train_feats / train_labels: see :func:`knn_scores`.
        val_feats (Tensor): ``[n, D]``; val_labels (Tensor): ``[n]``.
        num_classes (int): C.
        k (int): Defaults to 20. temperature (float): Defaults to 0.07.
        top (Sequence[int]): accuracies reported. Defaults to (1, 5).
        **chunks: ``query_chunk`` / ``memory_chunk``.

    Returns:
        dict: ``top1``, ``top5`` (fractions), ``k``, ``temperature``.
    """
    _, vy = _check(val_feats, val_labels, num_classes)
    scores = knn_scores(train_feats, train_labels, val_feats, num_classes, k, temperature,
                        **chunks)
    return dict(_accuracy(scores, vy, top), k=k, temperature=temperature)


def knn_sweep(train_feats: ArrayLike, train_labels: ArrayLike, val_feats: ArrayLike,
              val_labels: ArrayLike, num_classes: int, ks: Sequence[int] = (5, 10, 20, 50, 100),
              temperatures: Sequence[float] = (0.05, 0.07, 0.1, 0.15, 0.2),
              top: Sequence[int] = (1, 5),
              query_chunk: int = 1024, memory_chunk: int = 131072) -> Dict[str, Any]:
    """Weighted k-NN over a grid of ``k`` x ``T``; the best by top-1 is chosen on ``val`` itself.

    One search with ``max(ks)`` neighbours serves every ``k`` (the neighbours are sorted). The
    default grid is the released CoTAP code's (k in 5..100, T in 0.05..0.2).

    Returns:
        dict: ``table`` (one dict per ``(k, T)``: ``k``, ``temperature``, ``top1``, ...),
        ``best`` (the row with the highest top-1, ties: the first), ``selected_on``
        (:data:`SWEEP_SELECTION`).
    """
    f, y = _check(train_feats, train_labels, num_classes)
    _, vy = _check(val_feats, val_labels, num_classes)
    if not ks or not temperatures:
        raise ValueError('ks and temperatures must not be empty')
    sims, idx = topk_cosine(torch.as_tensor(val_feats), f, max(ks), query_chunk, memory_chunk)
    nbr = y.to(idx.device)[idx]
    table: List[Dict[str, Any]] = []
    for k in ks:
        for t in temperatures:
            scores = knn_vote(sims[:, :k], nbr[:, :k], num_classes, t)
            table.append(dict(k=k, temperature=t, **_accuracy(scores, vy, top)))
    best: Optional[Dict[str, Any]] = None
    for row in table:
        if best is None or row['top1'] > best['top1']:
            best = row
    return dict(table=table, best=best, selected_on=SWEEP_SELECTION)

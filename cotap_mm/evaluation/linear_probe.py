"""Frozen dense linear probe (linear semantic segmentation on frozen patch features).

Protocol (as in CoTAP's ``train_segmentation.py``, https://arxiv.org/abs/2509.09429, and the dense
SSL literature on COCO-Stuff / VOC): the backbone is frozen; its last-layer patch tokens
``[B, C, h, w]`` go through a 1x1 convolution (a per-patch linear layer, ``C -> K``); the logits are
**bilinearly upsampled to the label size** and trained with cross-entropy (``ignore_index=255``) with
Adam at a constant learning rate. At evaluation the upsampled logits are arg-maxed per pixel and
scored by mIoU.

mIoU definition used here: one confusion matrix accumulated over the *whole* validation set (rows =
ground truth, columns = prediction, ignore pixels dropped); per-class ``IoU_c = TP / (TP + FP + FN)``;
classes with ``TP + FP + FN = 0`` (absent from both ground truth and prediction) have IoU ``nan`` and
are excluded; ``mIoU`` is the mean over the remaining classes (= ``nanmean``, the same number mmseg's
``IoUMetric`` reports). ``pixel_acc = trace / total``.

Features are extracted once and cached in memory (the probe data are small), then the probe is fit
on the cached tensors. With ``flip=True`` training samples are horizontally flipped with probability
0.5, as in the released CoTAP probe (the features of the mirrored training images are cached too,
and every step draws, per sample, the plain or the mirrored features with the mirrored mask);
``tools/analysis_tools/dense_probe.py`` does this by default. :func:`dense_linear_probe` defaults to
``flip=False``, the protocol of the demo's and the dense benchmark's tables, so their numbers stay
comparable across versions. Other differences to the released probe: it reports the *best*
validation mIoU over passes (``select='best'``, an option; the default ``'last'`` is not selected on
the validation set), uses random-resized crops of the probe's training images (not done: features
are cached) and 100k samples seen (``epochs`` passes here).
"""
import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ArrayLike = Union[np.ndarray, torch.Tensor]
ExtractFn = Callable[[torch.Tensor], torch.Tensor]

IMAGENET_MEAN: Tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: Tuple[float, float, float] = (58.395, 57.12, 57.375)


def _as_long_tensor(name: str, x: ArrayLike) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{name} must be a numpy array or torch.Tensor, got {type(x).__name__}')
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f'{name} must hold integer class ids, got dtype {x.dtype}')
    return x.long()


def confusion_matrix(pred: ArrayLike,
                     gt: ArrayLike,
                     num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """Confusion matrix of integer label maps.

    Args:
        pred (np.ndarray | Tensor): predicted class ids, any shape, values in ``[0, K)``.
        gt (np.ndarray | Tensor): ground-truth class ids, same shape, values in ``[0, K)`` or
            ``ignore_index``.
        num_classes (int): number of classes K.
        ignore_index (int): ground-truth value to skip. Defaults to 255.

    Returns:
        Tensor: int64 ``[K, K]``, ``cm[g, p]`` = number of pixels with ground truth ``g`` predicted
        as ``p`` (on ``gt``'s device).

    Raises:
        ValueError: shapes differ, or labels out of range.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f'num_classes must be a positive int, got {num_classes!r}')
    pred = _as_long_tensor('pred', pred)
    gt = _as_long_tensor('gt', gt)
    if pred.shape != gt.shape:
        raise ValueError(f'pred and gt must have the same shape, got {tuple(pred.shape)} and '
                         f'{tuple(gt.shape)}')
    pred = pred.reshape(-1).to(gt.device)
    gt = gt.reshape(-1)
    keep = gt != ignore_index
    pred, gt = pred[keep], gt[keep]
    if gt.numel() and (gt.min() < 0 or gt.max() >= num_classes):
        raise ValueError(f'gt values must be in [0, {num_classes}) or ignore_index={ignore_index}, '
                         f'got range [{int(gt.min())}, {int(gt.max())}]')
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f'pred values must be in [0, {num_classes}), got range '
                         f'[{int(pred.min())}, {int(pred.max())}]')
    idx = gt * num_classes + pred
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes,
                                                                           num_classes)


def miou_from_confusion(cm: ArrayLike) -> Dict[str, Any]:
    """mIoU, per-class IoU and pixel accuracy from a confusion matrix.

    ``IoU_c = cm[c, c] / (sum_p cm[c, p] + sum_g cm[g, c] - cm[c, c])``; classes whose union is 0
    (absent from ground truth and prediction) get ``nan`` and are left out of the mean.

    Args:
        cm (np.ndarray | Tensor): ``[K, K]`` confusion matrix (rows = ground truth).

    Returns:
        dict: ``mIoU`` (float, nan if no class is present), ``per_class_iou`` (np.ndarray ``[K]``,
        float64, nan for absent classes), ``pixel_acc`` (float), ``mAcc`` (float, mean per-class
        recall over classes present in the ground truth), ``num_pixels`` (int).
    """
    if isinstance(cm, torch.Tensor):
        cm = cm.detach().cpu().numpy()
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f'cm must be a square [K, K] matrix, got shape {cm.shape}')
    tp = np.diag(cm)
    gt_count = cm.sum(1)
    pred_count = cm.sum(0)
    union = gt_count + pred_count - tp
    with np.errstate(divide='ignore', invalid='ignore'):
        iou = np.where(union > 0, tp / np.maximum(union, 1e-12), np.nan)
        recall = np.where(gt_count > 0, tp / np.maximum(gt_count, 1e-12), np.nan)
    total = cm.sum()
    present = ~np.isnan(iou)
    return dict(
        mIoU=float(iou[present].mean()) if present.any() else float('nan'),
        per_class_iou=iou,
        pixel_acc=float(tp.sum() / total) if total > 0 else float('nan'),
        mAcc=float(np.nanmean(recall)) if (~np.isnan(recall)).any() else float('nan'),
        num_pixels=int(total))


def _check_feats_masks(feats: torch.Tensor, masks: torch.Tensor, what: str) -> None:
    if feats.ndim != 4:
        raise ValueError(f'{what}_feats must be [N, C, h, w], got shape {tuple(feats.shape)}')
    if masks.ndim != 3:
        raise ValueError(f'{what}_masks must be [N, H, W], got shape {tuple(masks.shape)}')
    if feats.shape[0] != masks.shape[0]:
        raise ValueError(f'{what}_feats and {what}_masks must have the same N, got '
                         f'{feats.shape[0]} and {masks.shape[0]}')


def _to_float_tensor(name: str, x: ArrayLike) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{name} must be a numpy array or torch.Tensor, got {type(x).__name__}')
    return x.float()


def probe_logits(probe: nn.Module, feats: torch.Tensor, out_size: Tuple[int, int]) -> torch.Tensor:
    """Probe logits bilinearly upsampled to ``out_size`` (``align_corners=False``).

    Args:
        probe (nn.Module): maps ``[B, C, h, w]`` to ``[B, K, h, w]``.
        feats (Tensor): ``[B, C, h, w]``.
        out_size (tuple[int, int]): label size ``(H, W)``.

    Returns:
        Tensor: ``[B, K, H, W]``.
    """
    logits = probe(feats)
    if tuple(logits.shape[-2:]) != tuple(out_size):
        logits = F.interpolate(logits, size=tuple(out_size), mode='bilinear', align_corners=False)
    return logits


def flip_samples(feats: torch.Tensor, feats_flipped: torch.Tensor, masks: torch.Tensor,
                 choose: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the mirrored version where ``choose``: its mirrored-image features and its mask
    flipped along the width.

    Args:
        feats (Tensor): ``[B, C, h, w]`` features of the images.
        feats_flipped (Tensor): ``[B, C, h, w]`` features of the horizontally mirrored images.
        masks (Tensor): ``[B, H, W]`` labels of the images.
        choose (Tensor): bool ``[B]``, True = take the mirrored sample.

    Returns:
        tuple[Tensor, Tensor]: features ``[B, C, h, w]`` and masks ``[B, H, W]``.
    """
    c = choose.view(-1, 1, 1)
    return (torch.where(c[..., None], feats_flipped, feats),
            torch.where(c, masks.flip(-1), masks))


def fit_linear_probe(train_feats: ArrayLike,
                     train_masks: ArrayLike,
                     num_classes: int,
                     epochs: int = 10,
                     lr: float = 3e-3,
                     batch_size: int = 16,
                     weight_decay: float = 0.0,
                     ignore_index: int = 255,
                     seed: int = 0,
                     epoch_callback: Optional[Callable[[int, nn.Module], None]] = None,
                     train_feats_flipped: Optional[ArrayLike] = None
                     ) -> nn.Conv2d:
    """Fit a 1x1-conv linear probe on cached frozen patch features.

    Each step: ``logits = conv1x1(feats)`` -> bilinear upsampling to the mask size -> cross-entropy
    with ``ignore_index``; Adam, constant learning rate (the CoTAP protocol). With
    ``train_feats_flipped`` each sample of a step is, with probability 0.5 (drawn from the seeded
    generator), replaced by its mirrored version (:func:`flip_samples`).

    Args:
        train_feats (np.ndarray | Tensor): ``[N, C, h, w]`` frozen features (no grad needed).
        train_masks (np.ndarray | Tensor): ``[N, H, W]`` integer labels in ``[0, K)`` or
            ``ignore_index``.
        num_classes (int): number of classes K.
        epochs (int): passes over the training features. Defaults to 10.
        lr (float): Adam learning rate. Defaults to 3e-3 (the official value).
        batch_size (int): images per step. Defaults to 16.
        weight_decay (float): Adam weight decay. Defaults to 0.
        ignore_index (int): label to ignore. Defaults to 255.
        seed (int): seed of the probe initialisation and the shuffling. Defaults to 0.
        epoch_callback (Callable[[int, nn.Module], None], optional): called after each epoch with
            ``(epoch, probe)`` (e.g. to evaluate and keep the best).
        train_feats_flipped (np.ndarray | Tensor, optional): ``[N, C, h, w]`` features of the
            horizontally mirrored training images (same order). Defaults to None (no flip).

    Returns:
        nn.Conv2d: the trained probe ``Conv2d(C, K, 1)`` on the features' device, in eval mode.
    """
    feats = _to_float_tensor('train_feats', train_feats)
    masks = _as_long_tensor('train_masks', train_masks).to(feats.device)
    _check_feats_masks(feats, masks, 'train')
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f'num_classes must be a positive int, got {num_classes!r}')
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f'epochs must be a positive int, got {epochs!r}')
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f'batch_size must be a positive int, got {batch_size!r}')
    valid = masks[masks != ignore_index]
    if valid.numel() == 0:
        raise ValueError('train_masks hold only ignore_index pixels: nothing to fit')
    if valid.min() < 0 or valid.max() >= num_classes:
        raise ValueError(f'train_masks values must be in [0, {num_classes}) or '
                         f'ignore_index={ignore_index}, got range [{int(valid.min())}, '
                         f'{int(valid.max())}]')

    flipped = None
    if train_feats_flipped is not None:
        flipped = _to_float_tensor('train_feats_flipped', train_feats_flipped).to(feats.device)
        if flipped.shape != feats.shape:
            raise ValueError(f'train_feats_flipped must have the shape of train_feats '
                             f'{tuple(feats.shape)}, got {tuple(flipped.shape)}')

    gen = torch.Generator().manual_seed(seed)
    probe = nn.Conv2d(feats.shape[1], num_classes, kernel_size=1)
    with torch.no_grad():
        bound = 1.0 / math.sqrt(feats.shape[1])
        probe.weight.copy_(torch.empty_like(probe.weight).uniform_(-bound, bound, generator=gen))
        probe.bias.zero_()
    probe = probe.to(feats.device)
    opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    n = feats.shape[0]
    out_size = tuple(masks.shape[-2:])
    for epoch in range(epochs):
        probe.train()
        order = torch.randperm(n, generator=gen).to(feats.device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            x, y = feats[idx].detach(), masks[idx]
            if flipped is not None:
                choose = (torch.rand(len(idx), generator=gen) < 0.5).to(feats.device)
                x, y = flip_samples(x, flipped[idx].detach(), y, choose)
            logits = probe_logits(probe, x, out_size)
            loss = F.cross_entropy(logits, y, ignore_index=ignore_index)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        probe.eval()
        if epoch_callback is not None:
            epoch_callback(epoch, probe)
    probe.eval()
    return probe


@torch.no_grad()
def predict_linear_probe(probe: nn.Module,
                         feats: ArrayLike,
                         out_size: Tuple[int, int],
                         batch_size: int = 16) -> torch.Tensor:
    """Per-pixel predictions: upsampled logits, argmax.

    Args:
        probe (nn.Module): trained probe.
        feats (np.ndarray | Tensor): ``[N, C, h, w]``.
        out_size (tuple[int, int]): label size ``(H, W)``.
        batch_size (int): images per forward. Defaults to 16.

    Returns:
        Tensor: int64 ``[N, H, W]``.
    """
    feats = _to_float_tensor('feats', feats)
    if feats.ndim != 4:
        raise ValueError(f'feats must be [N, C, h, w], got shape {tuple(feats.shape)}')
    outs = [
        probe_logits(probe, feats[s:s + batch_size], out_size).argmax(1)
        for s in range(0, feats.shape[0], batch_size)
    ]
    return torch.cat(outs) if outs else torch.zeros((0, *out_size), dtype=torch.long)


@torch.no_grad()
def evaluate_linear_probe(probe: nn.Module,
                          val_feats: ArrayLike,
                          val_masks: ArrayLike,
                          num_classes: int,
                          ignore_index: int = 255,
                          batch_size: int = 16) -> Dict[str, Any]:
    """mIoU of a probe on cached validation features (one confusion matrix over the whole set).

    Args:
        probe (nn.Module): trained probe.
        val_feats (np.ndarray | Tensor): ``[N, C, h, w]``.
        val_masks (np.ndarray | Tensor): ``[N, H, W]`` labels.
        num_classes (int): number of classes K.
        ignore_index (int): label to ignore. Defaults to 255.
        batch_size (int): images per forward. Defaults to 16.

    Returns:
        dict: see :func:`miou_from_confusion`, plus ``confusion`` (np.ndarray ``[K, K]``).
    """
    feats = _to_float_tensor('val_feats', val_feats)
    masks = _as_long_tensor('val_masks', val_masks).to(feats.device)
    _check_feats_masks(feats, masks, 'val')
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long, device=feats.device)
    for s in range(0, feats.shape[0], batch_size):
        pred = probe_logits(probe, feats[s:s + batch_size], tuple(masks.shape[-2:])).argmax(1)
        cm += confusion_matrix(pred, masks[s:s + batch_size], num_classes, ignore_index)
    res = miou_from_confusion(cm)
    res['confusion'] = cm.cpu().numpy()
    return res


def images_to_tensor(images: ArrayLike) -> torch.Tensor:
    """Images to a float ``[N, 3, H, W]`` tensor (values unchanged, e.g. 0-255 RGB).

    numpy arrays whose last dimension is 3 are taken as ``[N, H, W, 3]`` (what
    :func:`~cotap_mm.datasets.synthetic_scenes.generate_scene` gives) and permuted; tensors must
    already be ``[N, 3, H, W]``.
    """
    if isinstance(images, np.ndarray):
        if images.ndim == 4 and images.shape[-1] == 3:
            images = images.transpose(0, 3, 1, 2)
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f'images must be a numpy array or torch.Tensor, got '
                        f'{type(images).__name__}')
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f'images must be [N, 3, H, W] (tensor) or [N, H, W, 3] (numpy), got '
                         f'shape {tuple(images.shape)}')
    return images.float()


def _iter_batches(data: Union[Tuple[ArrayLike, ArrayLike], Iterable], batch_size: int,
                  name: str) -> Iterable[Tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(
            data[0], (np.ndarray, torch.Tensor)):
        images = images_to_tensor(data[0])
        masks = _as_long_tensor(f'{name} masks', data[1])
        if images.shape[0] != masks.shape[0]:
            raise ValueError(f'{name}: images and masks must have the same N, got '
                             f'{images.shape[0]} and {masks.shape[0]}')
        for s in range(0, images.shape[0], batch_size):
            yield images[s:s + batch_size], masks[s:s + batch_size]
        return
    if isinstance(data, Iterable):
        for batch in data:
            if isinstance(batch, dict):
                imgs, msks = batch['images'], batch['masks']
            elif isinstance(batch, (tuple, list)) and len(batch) == 2:
                imgs, msks = batch
            else:
                raise TypeError(f'{name}: each batch must be (images, masks) or a dict with '
                                f"'images' and 'masks', got {type(batch).__name__}")
            yield images_to_tensor(imgs), _as_long_tensor(f'{name} masks', msks)
        return
    raise TypeError(f'{name} must be a tuple (images, masks) or an iterable of such batches, got '
                    f'{type(data).__name__}')


@torch.no_grad()
def extract_features(extract: ExtractFn,
                     data: Union[Tuple[ArrayLike, ArrayLike], Iterable],
                     batch_size: int = 16,
                     device: Union[str, torch.device, None] = None,
                     name: str = 'data',
                     mirror: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run a frozen extractor over a data set and cache features and masks in memory.

    Args:
        extract (Callable): ``images [B, 3, H, W] float -> features [B, C, h, w]``.
        data: ``(images, masks)`` arrays (images ``[N, 3, H, W]`` tensor or ``[N, H, W, 3]``
            numpy, masks ``[N, H, W]``) or an iterable of such batches (tuples or dicts with keys
            ``'images'`` / ``'masks'``).
        batch_size (int): batch size when ``data`` are arrays. Defaults to 16.
        device (str | torch.device, optional): where images are sent. Defaults to None (as given).
        name (str): name used in error messages. Defaults to 'data'.
        mirror (bool): flip images and masks horizontally first. Defaults to False.

    Returns:
        tuple[Tensor, Tensor]: features ``[N, C, h, w]`` (float32, detached) and masks
        ``[N, H, W]`` (int64), both on ``device`` (or the features' device).
    """
    feats, masks = [], []
    for imgs, msks in _iter_batches(data, batch_size, name):
        if mirror:
            imgs, msks = imgs.flip(-1), msks.flip(-1)
        if device is not None:
            imgs = imgs.to(device)
        f = extract(imgs)
        if not isinstance(f, torch.Tensor) or f.ndim != 4 or f.shape[0] != imgs.shape[0]:
            shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise ValueError(f'extract must return [B, C, h, w] features for B={imgs.shape[0]} '
                             f'images, got {shape}')
        feats.append(f.detach().float())
        masks.append(msks.to(f.device))
    if not feats:
        raise ValueError(f'{name} is empty')
    return torch.cat(feats), torch.cat(masks)


def dense_linear_probe(backbone_fn: ExtractFn,
                       train_data: Union[Tuple[ArrayLike, ArrayLike], Iterable],
                       val_data: Union[Tuple[ArrayLike, ArrayLike], Iterable],
                       num_classes: int,
                       epochs: int = 10,
                       lr: float = 3e-3,
                       batch_size: int = 16,
                       weight_decay: float = 0.0,
                       ignore_index: int = 255,
                       seed: int = 0,
                       select: str = 'last',
                       flip: bool = False,
                       device: Union[str, torch.device, None] = None,
                       return_features: bool = False) -> Dict[str, Any]:
    """Frozen linear probe end to end: extract features, fit the 1x1 conv, score mIoU on val.

    Args:
        backbone_fn (Callable): frozen ``images [B, 3, H, W] -> [B, C, h, w]`` (called under
            ``torch.no_grad``), e.g. from :func:`build_patch_feature_extractor`.
        train_data: training ``(images, masks)`` or an iterable of batches (see
            :func:`extract_features`).
        val_data: validation data, same forms.
        num_classes (int): number of classes K (labels in ``[0, K)``, ``ignore_index`` skipped).
        epochs (int): probe epochs. Defaults to 10.
        lr (float): Adam learning rate. Defaults to 3e-3.
        batch_size (int): batch size of extraction and probe training. Defaults to 16.
        weight_decay (float): Defaults to 0.
        ignore_index (int): Defaults to 255.
        seed (int): probe seed. Defaults to 0.
        select (str): ``'last'`` (default): score the probe after the last epoch; ``'best'``:
            evaluate after every epoch and report the best val mIoU (the official CoTAP code's
            choice; optimistic since it selects on val).
        flip (bool): horizontal flip of the training samples with probability 0.5, as released
            (extracts the mirrored training images too; ``train_data`` must then be re-iterable).
            Defaults to False (the demo's and the dense benchmark's protocol).
        device (str | torch.device, optional): device for extraction and probe. Defaults to None.
        return_features (bool): also return the cached val features/masks (``val_feats``,
            ``val_masks``) and the probe. Defaults to False.

    Returns:
        dict: ``mIoU``, ``per_class_iou`` (np.ndarray ``[K]``, nan = absent), ``pixel_acc``,
        ``mAcc``, ``num_pixels``, ``confusion``, ``epoch`` (the epoch scored, 0-based), and with
        ``return_features`` also ``val_feats``, ``val_masks``, ``probe``.
    """
    if select not in ('last', 'best'):
        raise ValueError(f"select must be 'last' or 'best', got {select!r}")
    if not isinstance(flip, bool):
        raise TypeError(f'flip must be a bool, got {flip!r}')
    if flip and not isinstance(train_data, (tuple, list)) and iter(train_data) is train_data:
        raise TypeError('flip=True reads train_data twice (plain and mirrored): pass a list, a '
                        '(images, masks) tuple or a DataLoader, not a one-shot iterator')
    tr_f, tr_m = extract_features(backbone_fn, train_data, batch_size, device, 'train_data')
    tr_f_flipped = (extract_features(backbone_fn, train_data, batch_size, device, 'train_data',
                                     mirror=True)[0] if flip else None)
    va_f, va_m = extract_features(backbone_fn, val_data, batch_size, device, 'val_data')
    best: Dict[str, Any] = {}

    def _cb(epoch: int, probe: nn.Module) -> None:
        if select != 'best':
            return
        res = evaluate_linear_probe(probe, va_f, va_m, num_classes, ignore_index, batch_size)
        if not best or res['mIoU'] > best['mIoU']:
            best.clear()
            best.update(res, epoch=epoch)

    probe = fit_linear_probe(tr_f, tr_m, num_classes, epochs, lr, batch_size, weight_decay,
                             ignore_index, seed, _cb, tr_f_flipped)
    if select == 'best':
        result = dict(best)
    else:
        result = evaluate_linear_probe(probe, va_f, va_m, num_classes, ignore_index, batch_size)
        result['epoch'] = epochs - 1
    if return_features:
        result.update(val_feats=va_f, val_masks=va_m, probe=probe)
    return result


def last_layer_output(backbone: nn.Module, x: torch.Tensor, vit_out_type: str = 'featmap') -> Any:
    """The last output of ``backbone(x)``.

    An mmpretrain ``VisionTransformer`` (or subclass) runs with ``out_type=vit_out_type`` and
    ``out_indices=[last layer]`` (temporarily; the module's settings are restored even on error),
    so the output is taken after the final norm if the backbone has ``final_norm=True``. Other
    backbones run as they are. A tuple / list output gives its last element.

    Args:
        backbone (nn.Module): the backbone (mode and gradients are the caller's business).
        x (Tensor): [B, 3, H, W] normalised images.
        vit_out_type (str): mmpretrain ViT ``out_type`` ('featmap', 'cls_token',
            'avg_featmap', 'raw'). Defaults to 'featmap'.

    Returns:
        The backbone output (a tensor for mmpretrain backbones).
    """
    from mmpretrain.models.backbones import VisionTransformer
    if isinstance(backbone, VisionTransformer):
        old = (backbone.out_type, list(backbone.out_indices))
        backbone.out_type = vit_out_type
        backbone.out_indices = [len(backbone.layers) - 1]
        try:
            out = backbone(x)
        finally:
            backbone.out_type, backbone.out_indices = old
    else:
        out = backbone(x)
    if isinstance(out, (tuple, list)):
        out = out[-1]
    return out


def normalize_images(images: torch.Tensor, mean: Optional[Sequence[float]] = IMAGENET_MEAN,
                     std: Optional[Sequence[float]] = IMAGENET_STD) -> torch.Tensor:
    """0-255 images ``[B, C, H, W]`` -> float ``(x - mean) / std`` per channel (on their device).

    ``mean=None`` (and ``std=None``) only converts to float.
    """
    x = images.float()
    if mean is None:
        return x
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def build_patch_feature_extractor(model_or_backbone: nn.Module,
                                  mean: Optional[Sequence[float]] = IMAGENET_MEAN,
                                  std: Optional[Sequence[float]] = IMAGENET_STD
                                  ) -> ExtractFn:
    """Frozen last-layer patch features ``[B, C, h, w]`` of an mmpretrain backbone.

    For an mmpretrain ``VisionTransformer`` (or subclass) the forward runs with ``out_type='featmap'``
    and ``out_indices=[last layer]`` (temporarily, :func:`last_layer_output`), i.e. the
    patch tokens after the final norm if the backbone has ``final_norm=True``. Other backbones must
    return a 4-D tensor or a tuple/list whose last element is one. A model with a ``.backbone``
    attribute (a whole mmpretrain model) uses that backbone. Plug other features (e.g. CoTAP's 2C-dim
    tokens) by passing your own callable to :func:`dense_linear_probe` instead.

    Args:
        model_or_backbone (nn.Module): backbone, or model with ``.backbone``.
        mean (Sequence[float], optional): per-channel mean subtracted from the input images
            (which are 0-255 RGB). Defaults to ImageNet's; None = no normalisation.
        std (Sequence[float], optional): per-channel std. Defaults to ImageNet's.

    Returns:
        Callable: ``extract(images [B, 3, H, W] float, 0-255 RGB) -> [B, C, h, w]``, run in eval
        mode under ``torch.no_grad()`` on the backbone's device.
    """
    if not isinstance(model_or_backbone, nn.Module):
        raise TypeError(f'model_or_backbone must be an nn.Module, got '
                        f'{type(model_or_backbone).__name__}')
    backbone = getattr(model_or_backbone, 'backbone', None)
    if not isinstance(backbone, nn.Module):
        backbone = model_or_backbone
    if (mean is None) != (std is None):
        raise ValueError('mean and std must both be given or both be None')

    @torch.no_grad()
    def extract(images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError('images must be a [B, 3, H, W] tensor')
        param = next(backbone.parameters(), None)
        x = normalize_images(images if param is None else images.to(param.device), mean, std)
        was_training = backbone.training
        backbone.eval()
        try:
            out = last_layer_output(backbone, x, 'featmap')
        finally:
            backbone.train(was_training)
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            raise TypeError('the backbone must return [B, C, h, w] features (or a tuple ending '
                            'with them); wrap it in your own extract callable otherwise')
        return out

    return extract


def preprocessor_mean_std(model: nn.Module) -> Tuple[Optional[List[float]], Optional[List[float]]]:
    """Per-channel ``mean`` / ``std`` of a model's data preprocessor (None where it has none)."""
    pre = getattr(model, 'data_preprocessor', None)
    mean = getattr(pre, 'mean', None)
    std = getattr(pre, 'std', None)
    return (None if mean is None else mean.flatten().tolist(),
            None if std is None else std.flatten().tolist())


def build_model_feature_extractor(model: nn.Module) -> ExtractFn:
    """Frozen dense features ``[B, C, h, w]`` of a whole mmpretrain self-supervised model.

    Uses ``model.extract_feat`` when it returns a ``[B, C, h, w]`` map (CoTAP: the 2C-dim filtered
    patch tokens); otherwise (MoCo v3, DenseCL, ...) the backbone's last-layer patch tokens, as
    :func:`build_patch_feature_extractor`. Which of the two applies is decided on the first call.
    Images are 0-255 RGB, normalised with the model's data preprocessor ``mean``/``std`` when it has
    them. Runs in eval mode under ``torch.no_grad()``; the model's mode is restored.
    """
    mean, std = preprocessor_mean_std(model)
    backbone_extract = build_patch_feature_extractor(model, mean, std)
    use_extract_feat: List[bool] = []

    @torch.no_grad()
    def extract(images: torch.Tensor) -> torch.Tensor:
        if use_extract_feat == [False] or not hasattr(model, 'extract_feat'):
            return backbone_extract(images)
        x = normalize_images(images.to(next(model.parameters()).device), mean, std)
        was_training = model.training
        model.eval()
        try:
            out = model.extract_feat(x)
        finally:
            model.train(was_training)
        if not use_extract_feat:
            use_extract_feat.append(isinstance(out, torch.Tensor) and out.ndim == 4)
        return out if use_extract_feat[0] else backbone_extract(images)

    return extract

"""Dense nearest-neighbour retrieval ("in-context" segmentation, Hummingbird protocol).

Protocol (Hummingbird, `arXiv 2306.01667 <https://arxiv.org/abs/2306.01667>`_, evaluated the same
way by NeCo, `arXiv 2408.11054 <https://arxiv.org/abs/2408.11054>`_): no training at all.

1. **Memory bank.** The frozen patch features ``[D]`` of the training images, each with the
   majority label of its patch (:func:`~.dispersion.patch_majority_labels`; patches without a
   labelled pixel are left out). With a size cap ``memory_size``, every training image gives
   ``memory_size // num_images`` of its labelled patches, drawn uniformly at random with a seeded
   generator (all of them when it has fewer). Features are stored L2-normalised.
2. **Retrieval.** Every validation patch (L2-normalised) takes its ``k`` nearest memory entries by
   cosine similarity; the search runs in blocks of ``query_chunk`` queries x ``memory_chunk``
   memory entries and merges the per-block top-k (:func:`topk_cosine`), so 10^6 entries fit on one
   GPU (a block holds ``query_chunk * memory_chunk`` similarities).
3. **Vote.** The neighbours' weights are ``softmax(sim / T)`` over the ``k`` neighbours; the class
   scores of the patch are the weights summed per class (:func:`knn_vote`).
4. **Scoring.** The per-patch class scores ``[C, h, w]`` are upsampled bilinearly to the label size
   and arg-maxed per pixel; mIoU over the whole set (:func:`~.linear_probe.confusion_matrix`,
   :func:`~.linear_probe.miou_from_confusion`).

Defaults ``k = 30`` and ``T = 0.02`` are those of the open Hummingbird evaluation
(github.com/vpariza/open-hummingbird-eval, ``n_neighbours=30``, ``cross_attention(beta=0.02)``).
Differences to it: its memory stores each patch's class *fractions* (a soft label) and samples
patches favouring rare classes; here a patch has its majority label and patches are drawn
uniformly; the exact search replaces its approximate ScaNN / faiss search.
"""
from typing import Any, Callable, Dict, Iterable, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .dispersion import patch_majority_labels
from .linear_probe import _as_long_tensor, _iter_batches, confusion_matrix, miou_from_confusion
from .overclustering import _check_pos_int

ArrayLike = Union[np.ndarray, torch.Tensor]
ExtractFn = Callable[[torch.Tensor], torch.Tensor]

__all__ = [
    'topk_cosine', 'knn_vote', 'sample_memory_patches', 'patches_per_image', 'build_memory_bank',
    'nn_retrieval_predict', 'nn_retrieval_eval', 'dense_nn_retrieval'
]


def _float_tensor(name: str, x: ArrayLike, ndim: int) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != ndim:
        raise ValueError(f'{name} must be a floating point tensor with {ndim} dims, got '
                         f'{tuple(getattr(x, "shape", ()))} '
                         f'{getattr(x, "dtype", type(x).__name__)}')
    return x


def topk_cosine(queries: torch.Tensor,
                memory: torch.Tensor,
                k: int,
                query_chunk: int = 1024,
                memory_chunk: int = 131072,
                memory_normalized: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact cosine k-nearest neighbours, blockwise with the top-k merged across memory blocks.

    Args:
        queries (Tensor): ``[n, D]``.
        memory (Tensor): ``[M, D]`` (may be float16 to halve its memory; similarities are float32).
        k (int): neighbours, ``1 <= k <= M``.
        query_chunk (int): queries per block. Defaults to 1024.
        memory_chunk (int): memory entries per block. Defaults to 131072 (one block of
            similarities: 1024 x 131072 float32 = 512 MiB).
        memory_normalized (bool): ``memory`` rows have unit norm already. Defaults to False.

    Returns:
        tuple[Tensor, Tensor]: similarities ``[n, k]`` (descending) and memory indices ``[n, k]``
        (int64), on the queries' device.
    """
    k = _check_pos_int('k', k)
    _check_pos_int('query_chunk', query_chunk)
    _check_pos_int('memory_chunk', memory_chunk)
    if queries.ndim != 2 or memory.ndim != 2 or queries.shape[1] != memory.shape[1]:
        raise ValueError(f'queries [n, D] and memory [M, D] must share D, got '
                         f'{tuple(queries.shape)} and {tuple(memory.shape)}')
    if k > memory.shape[0]:
        raise ValueError(f'k={k} neighbours asked from a memory of {memory.shape[0]} entries')
    q_all = F.normalize(queries.float(), dim=1)
    out_s, out_i = [], []
    for qs in range(0, q_all.shape[0], query_chunk):
        q = q_all[qs:qs + query_chunk]
        best_s: Optional[torch.Tensor] = None
        best_i: Optional[torch.Tensor] = None
        for ms in range(0, memory.shape[0], memory_chunk):
            m = memory[ms:ms + memory_chunk].to(q.device).float()
            if not memory_normalized:
                m = F.normalize(m, dim=1)
            s, i = (q @ m.t()).topk(min(k, m.shape[0]), dim=1)
            i = i + ms
            if best_s is not None:
                s = torch.cat([best_s, s], 1)
                s, j = s.topk(min(k, s.shape[1]), dim=1)
                i = torch.cat([best_i, i], 1).gather(1, j)
            best_s, best_i = s, i
        out_s.append(best_s)
        out_i.append(best_i)
    if not out_s:
        return (torch.zeros(0, k, device=queries.device),
                torch.zeros(0, k, dtype=torch.long, device=queries.device))
    return torch.cat(out_s), torch.cat(out_i)


def knn_vote(sims: torch.Tensor, neighbor_labels: torch.Tensor, num_classes: int,
             temperature: float) -> torch.Tensor:
    """Temperature-weighted class vote of ``k`` neighbours.

    ``w_j = softmax(sims / T)_j`` over the ``k`` neighbours; ``score_c = sum_{j: y_j = c} w_j``
    (each row sums to 1). The same ranking as DINO's un-normalised ``exp(sim / T)`` weights.

    Args:
        sims (Tensor): ``[n, k]`` similarities.
        neighbor_labels (Tensor): ``[n, k]`` class ids in ``[0, C)``.
        num_classes (int): C.
        temperature (float): T > 0.

    Returns:
        Tensor: ``[n, C]`` float32 class scores.
    """
    _check_pos_int('num_classes', num_classes)
    if not temperature > 0:
        raise ValueError(f'temperature must be > 0, got {temperature!r}')
    if sims.shape != neighbor_labels.shape or sims.ndim != 2:
        raise ValueError(f'sims and neighbor_labels must both be [n, k], got {tuple(sims.shape)} '
                         f'and {tuple(neighbor_labels.shape)}')
    lab = neighbor_labels.long()
    if lab.numel() and (lab.min() < 0 or lab.max() >= num_classes):
        raise ValueError(f'neighbor_labels must be in [0, {num_classes}), got range '
                         f'[{int(lab.min())}, {int(lab.max())}]')
    w = torch.softmax(sims.float() / temperature, dim=1)
    scores = torch.zeros(sims.shape[0], num_classes, dtype=w.dtype, device=w.device)
    return scores.scatter_add_(1, lab, w)


def patches_per_image(memory_size: Optional[int], num_images: int) -> Optional[int]:
    """Hummingbird's per-image share of a memory cap: ``memory_size // num_images`` (None = no cap).

    Raises:
        ValueError: the cap gives an image no patch.
    """
    _check_pos_int('num_images', num_images)
    if memory_size is None:
        return None
    _check_pos_int('memory_size', memory_size)
    if memory_size < num_images:
        raise ValueError(f'memory_size={memory_size} is smaller than the {num_images} memory '
                         f'images: each image must give at least one patch')
    return memory_size // num_images


def sample_memory_patches(feats: ArrayLike,
                          masks: ArrayLike,
                          per_image: Optional[int],
                          generator: torch.Generator,
                          ignore_index: int = 255,
                          normalize: bool = True,
                          dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Memory entries of a batch of images: labelled patches, at most ``per_image`` per image.

    Args:
        feats (np.ndarray | Tensor): ``[B, D, h, w]`` patch features.
        masks (np.ndarray | Tensor): ``[B, H, W]`` pixel labels (``ignore_index`` = unlabelled).
        per_image (int, optional): cap per image (None: every labelled patch).
        generator (torch.Generator): CPU generator of the draws (one ``randperm`` per image that
            has more labelled patches than the cap, in image order).
        ignore_index (int): Defaults to 255.
        normalize (bool): L2-normalise the stored features. Defaults to True.
        dtype (torch.dtype): stored feature dtype. Defaults to float32.

    Returns:
        tuple[Tensor, Tensor]: features ``[M, D]`` and majority labels ``[M]`` int64 (on the
        features' device), image by image, patches in raster order within an image.
    """
    feats = _float_tensor('feats', feats, 4)
    masks = _as_long_tensor('masks', masks)
    if masks.ndim != 3 or masks.shape[0] != feats.shape[0]:
        raise ValueError(f'masks must be [B, H, W] with B={feats.shape[0]}, got '
                         f'{tuple(masks.shape)}')
    b, d, h, w = feats.shape
    labels = patch_majority_labels(masks.cpu(), (h, w), ignore_index).reshape(b, h * w)
    flat = feats.permute(0, 2, 3, 1).reshape(b, h * w, d)
    out_f, out_l = [], []
    for i in range(b):
        idx = (labels[i] != ignore_index).nonzero()[:, 0]
        if per_image is not None and idx.numel() > per_image:
            idx = idx[torch.randperm(idx.numel(), generator=generator)[:per_image].sort().values]
        f = flat[i, idx.to(flat.device)].float()
        out_f.append((F.normalize(f, dim=1) if normalize else f).to(dtype))
        out_l.append(labels[i, idx].to(flat.device))
    return torch.cat(out_f), torch.cat(out_l)


@torch.no_grad()
def build_memory_bank(extract: ExtractFn,
                      data: Union[Tuple[ArrayLike, ArrayLike], Iterable],
                      per_image: Optional[int],
                      seed: int = 0,
                      batch_size: int = 16,
                      device: Union[str, torch.device, None] = None,
                      ignore_index: int = 255,
                      dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Memory bank streamed from a frozen extractor (only the sampled patches are kept).

    Args:
        extract (Callable): ``images [B, 3, H, W] (0-255 RGB) -> [B, D, h, w]``.
        data: ``(images, masks)`` arrays or an iterable of batches (see
            :func:`~.linear_probe.extract_features`).
        per_image (int, optional): patches per image (:func:`patches_per_image`); None = all.
        seed (int): seed of the patch draws. Defaults to 0.
        batch_size (int): images per forward for array data. Defaults to 16.
        device: where images are sent. Defaults to None.
        ignore_index (int): Defaults to 255.
        dtype (torch.dtype): stored feature dtype (float16 halves the bank). Defaults to float32.

    Returns:
        tuple[Tensor, Tensor]: L2-normalised features ``[M, D]`` and labels ``[M]``; the same as
        :func:`sample_memory_patches` on the cached features with the same seed.
    """
    gen = torch.Generator().manual_seed(int(seed))
    feats, labels = [], []
    for imgs, msks in _iter_batches(data, batch_size, 'memory data'):
        f = extract(imgs if device is None else imgs.to(device))
        mf, ml = sample_memory_patches(f, msks, per_image, gen, ignore_index, True, dtype)
        feats.append(mf)
        labels.append(ml)
    if not feats:
        raise ValueError('memory data is empty')
    feats_t, labels_t = torch.cat(feats), torch.cat(labels)
    if feats_t.shape[0] == 0:
        raise ValueError('the memory data hold no labelled patch')
    return feats_t, labels_t


@torch.no_grad()
def nn_retrieval_predict(feats: ArrayLike,
                         memory_feats: torch.Tensor,
                         memory_labels: torch.Tensor,
                         num_classes: int,
                         out_size: Tuple[int, int],
                         k: int = 30,
                         temperature: float = 0.02,
                         query_chunk: int = 1024,
                         memory_chunk: int = 131072) -> torch.Tensor:
    """Per-pixel predictions of query images from the memory bank.

    Args:
        feats (np.ndarray | Tensor): ``[B, D, h, w]`` query patch features.
        memory_feats (Tensor): ``[M, D]`` L2-normalised memory features.
        memory_labels (Tensor): ``[M]`` memory labels in ``[0, C)``.
        num_classes (int): C.
        out_size (tuple[int, int]): label size ``(H, W)``.
        k / temperature: neighbours and vote temperature (:func:`knn_vote`).
        query_chunk / memory_chunk: block sizes of :func:`topk_cosine`.

    Returns:
        Tensor: int64 ``[B, H, W]``: arg-max of the bilinearly upsampled class scores.
    """
    feats = _float_tensor('feats', feats, 4)
    b, d, h, w = feats.shape
    q = feats.permute(0, 2, 3, 1).reshape(-1, d)
    sims, idx = topk_cosine(q, memory_feats, k, query_chunk, memory_chunk, memory_normalized=True)
    scores = knn_vote(sims, memory_labels.to(idx.device)[idx], num_classes, temperature)
    scores = scores.reshape(b, h, w, num_classes).permute(0, 3, 1, 2)
    if tuple(out_size) != (h, w):
        scores = F.interpolate(scores, size=tuple(out_size), mode='bilinear', align_corners=False)
    return scores.argmax(1)


@torch.no_grad()
def nn_retrieval_eval(train_feats: ArrayLike,
                      train_masks: ArrayLike,
                      val_feats: ArrayLike,
                      val_masks: ArrayLike,
                      num_classes: int,
                      memory_size: Optional[int] = None,
                      k: int = 30,
                      temperature: float = 0.02,
                      seed: int = 0,
                      ignore_index: int = 255,
                      image_batch: int = 16,
                      query_chunk: int = 1024,
                      memory_chunk: int = 131072) -> Dict[str, Any]:
    """Dense NN retrieval mIoU on cached features (memory from train, queries from val).

    Args:
        train_feats / train_masks: ``[N, D, h, w]`` features and ``[N, H, W]`` labels of the
            memory images.
        val_feats / val_masks: the same for the query images (any ``H, W``).
        num_classes (int): C.
        memory_size (int, optional): cap on the memory entries (Hummingbird's sampling, see the
            module docstring). Defaults to None (every labelled training patch).
        k (int): neighbours. Defaults to 30.
        temperature (float): vote temperature. Defaults to 0.02.
        seed (int): seed of the memory sampling. Defaults to 0.
        ignore_index (int): Defaults to 255.
        image_batch (int): query images per block. Defaults to 16.
        query_chunk / memory_chunk: block sizes of :func:`topk_cosine`.

    Returns:
        dict: :func:`~.linear_probe.miou_from_confusion`'s keys, ``confusion`` ``[C, C]``,
        ``memory_entries`` (int), ``k``, ``temperature``.
    """
    train_feats = _float_tensor('train_feats', train_feats, 4)
    val_feats = _float_tensor('val_feats', val_feats, 4)
    val_masks = _as_long_tensor('val_masks', val_masks).to(val_feats.device)
    if val_masks.ndim != 3 or val_masks.shape[0] != val_feats.shape[0]:
        raise ValueError(f'val_masks must be [N, H, W] with N={val_feats.shape[0]}, got '
                         f'{tuple(val_masks.shape)}')
    per_image = patches_per_image(memory_size, train_feats.shape[0])
    gen = torch.Generator().manual_seed(int(seed))
    mem_f, mem_l = sample_memory_patches(train_feats, train_masks, per_image, gen, ignore_index)
    if mem_f.shape[0] == 0:
        raise ValueError('train_masks hold no labelled patch: the memory bank is empty')
    batches = ((val_feats[s:s + image_batch], val_masks[s:s + image_batch])
               for s in range(0, val_feats.shape[0], image_batch))
    cm = _retrieval_confusion(batches, mem_f, mem_l, num_classes, k, temperature, ignore_index,
                              query_chunk, memory_chunk)
    return _retrieval_result(cm, mem_f.shape[0], k, temperature)


def _retrieval_confusion(batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
                         mem_f: torch.Tensor, mem_l: torch.Tensor, num_classes: int, k: int,
                         temperature: float, ignore_index: int, query_chunk: int,
                         memory_chunk: int) -> torch.Tensor:
    """Confusion matrix of the retrieval predictions over ``(feats, masks)`` batches."""
    cm: Optional[torch.Tensor] = None
    for feats, masks in batches:
        pred = nn_retrieval_predict(feats, mem_f, mem_l, num_classes, tuple(masks.shape[-2:]), k,
                                    temperature, query_chunk, memory_chunk)
        part = confusion_matrix(pred, masks, num_classes, ignore_index)
        cm = part if cm is None else cm + part.to(cm.device)
    if cm is None:
        raise ValueError('no query image')
    return cm


def _retrieval_result(cm: torch.Tensor, memory_entries: int, k: int,
                      temperature: float) -> Dict[str, Any]:
    res = miou_from_confusion(cm)
    res.update(confusion=cm.cpu().numpy(), memory_entries=int(memory_entries), k=k,
               temperature=temperature)
    return res


@torch.no_grad()
def dense_nn_retrieval(extract: ExtractFn,
                       train_data: Union[Tuple[ArrayLike, ArrayLike], Iterable],
                       val_data: Union[Tuple[ArrayLike, ArrayLike], Iterable],
                       num_classes: int,
                       per_image: Optional[int] = None,
                       k: int = 30,
                       temperature: float = 0.02,
                       seed: int = 0,
                       batch_size: int = 16,
                       device: Union[str, torch.device, None] = None,
                       ignore_index: int = 255,
                       query_chunk: int = 1024,
                       memory_chunk: int = 131072) -> Dict[str, Any]:
    """Dense NN retrieval of a frozen extractor, streamed (no feature set is cached whole).

    The memory bank comes from :func:`build_memory_bank` on ``train_data`` (``per_image`` patches
    per image, see :func:`patches_per_image`), the queries from ``val_data`` batch by batch; the
    result equals :func:`nn_retrieval_eval` on the cached features.

    Args:
        extract (Callable): ``images [B, 3, H, W] (0-255 RGB) -> [B, D, h, w]``, frozen.
        train_data / val_data: ``(images, masks)`` arrays or iterables of batches (see
            :func:`~.linear_probe.extract_features`).
        num_classes (int): C.
        per_image (int, optional): memory patches per training image. Defaults to None (all).
        k / temperature / seed / ignore_index / query_chunk / memory_chunk: see
            :func:`nn_retrieval_eval`.
        batch_size (int): images per forward for array data. Defaults to 16.
        device: where images are sent. Defaults to None.

    Returns:
        dict: as :func:`nn_retrieval_eval`.
    """
    mem_f, mem_l = build_memory_bank(extract, train_data, per_image, seed, batch_size, device,
                                     ignore_index)

    def batches() -> Iterable[Tuple[torch.Tensor, torch.Tensor]]:
        for imgs, masks in _iter_batches(val_data, batch_size, 'val_data'):
            feats = extract(imgs if device is None else imgs.to(device))
            yield feats, masks.to(feats.device)

    cm = _retrieval_confusion(batches(), mem_f, mem_l, num_classes, k, temperature, ignore_index,
                              query_chunk, memory_chunk)
    return _retrieval_result(cm, mem_f.shape[0], k, temperature)

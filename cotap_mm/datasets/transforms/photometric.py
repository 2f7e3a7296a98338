"""Photometric augmentations for the student views, safe under NumPy 2.

CoTAP (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_) augments the student crops with
``ColorJitter(0.8, 0.8, 0.8, 0.2)`` (p=0.8), grayscale (p=0.2) and a 7x7 Gaussian blur with
sigma in [0.1, 2] (p=0.5); the teacher sees clean crops. The release draws these once per crop
index for the whole batch (:class:`~cotap_mm.datasets.batch_augments.PerViewColorAugment`, the
default of the released-run configs); the transforms here draw them per image and per crop, the
option (``GeometricMultiView(student_pipeline=...)``).

Why not mmpretrain's transforms:

* ``mmpretrain.ColorJitter`` calls ``mmcv.adjust_hue``, which does ``np.uint8(hue_factor * 255)``
  and raises ``OverflowError`` for negative hue factors under NumPy 2. :class:`HueSafeColorJitter`
  does the whole jitter in float32 (hue through HSV with the hue channel in [0, 360)).
* ``mmpretrain.GaussianBlur`` uses PIL's untruncated Gaussian; the official pipeline uses
  torchvision's ``GaussianBlur(kernel_size=7)``, i.e. a Gaussian truncated to 7x7 with reflect
  padding, which :class:`RandomGaussianBlur` reproduces (OpenCV, ``BORDER_REFLECT_101`` = torch
  'reflect'). Either can be used in configs.
* Grayscale: mmcv's ``RandomGrayscale`` works on numpy crops and is reused through the registry,
  e.g. ``dict(type='RandomGrayscale', prob=0.2, keep_channels=True,
  channel_weights=(0.114, 0.587, 0.299))`` for BGR crops (ITU-R 601 luma weights as torchvision).
"""
import math
import numbers
from typing import Dict, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from mmcv.transforms import BaseTransform
from mmpretrain.registry import TRANSFORMS

Range = Union[float, Sequence[float]]

#: ITU-R 601-2 luma weights for R, G, B (torchvision's ``rgb_to_grayscale``).
LUMA_RGB = (0.299, 0.587, 0.114)


def _check_channel_order(channel_order: str) -> str:
    if channel_order not in ('rgb', 'bgr'):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    return channel_order


def _is_color(img: np.ndarray) -> bool:
    return img.ndim == 3 and img.shape[2] == 3


def grayscale(img: np.ndarray, channel_order: str = 'bgr') -> np.ndarray:
    """Luma ``0.299 R + 0.587 G + 0.114 B`` as float32 ``H x W`` (input returned if 1 channel)."""
    _check_channel_order(channel_order)
    img = np.asarray(img, dtype=np.float32)
    if not _is_color(img):
        return img.reshape(img.shape[:2])
    w = LUMA_RGB if channel_order == 'rgb' else LUMA_RGB[::-1]
    return img[..., 0] * w[0] + img[..., 1] * w[1] + img[..., 2] * w[2]


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """``clip(factor * img, 0, 255)`` as float32 (torchvision's blend with black)."""
    return np.clip(np.asarray(img, dtype=np.float32) * factor, 0.0, 255.0)


def adjust_contrast(img: np.ndarray, factor: float, channel_order: str = 'bgr') -> np.ndarray:
    """Blend with the mean luma of the image: ``clip(f * img + (1 - f) * mean(gray))``."""
    img = np.asarray(img, dtype=np.float32)
    mean = float(grayscale(img, channel_order).mean())
    return np.clip(factor * img + (1.0 - factor) * mean, 0.0, 255.0)


def adjust_saturation(img: np.ndarray, factor: float, channel_order: str = 'bgr') -> np.ndarray:
    """Blend with the grayscale image: ``clip(f * img + (1 - f) * gray)``; no-op on 1 channel."""
    img = np.asarray(img, dtype=np.float32)
    if not _is_color(img):
        return img
    gray = grayscale(img, channel_order)[..., None]
    return np.clip(factor * img + (1.0 - factor) * gray, 0.0, 255.0)


def adjust_hue(img: np.ndarray, factor: float, channel_order: str = 'bgr') -> np.ndarray:
    """Rotate the hue by ``factor`` turns (``factor`` in [-0.5, 0.5]), in float: no uint8 overflow.

    ``factor=+1/3`` maps pure red to pure green, ``-1/3`` red to blue (as torchvision). Works on
    float32 values in [0, 255] and returns float32 in [0, 255]; a no-op on 1-channel images.
    """
    if not -0.5 <= factor <= 0.5:
        raise ValueError(f'hue factor must be in [-0.5, 0.5], got {factor!r}')
    img = np.asarray(img, dtype=np.float32)
    if not _is_color(img) or factor == 0:
        return img
    to_hsv, to_col = ((cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB) if channel_order == 'rgb' else
                      (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR))
    hsv = cv2.cvtColor(np.ascontiguousarray(img / 255.0, dtype=np.float32), to_hsv)
    hsv[..., 0] = np.mod(hsv[..., 0] + np.float32(factor * 360.0), np.float32(360.0))
    out = cv2.cvtColor(hsv, to_col)
    return np.clip(out * 255.0, 0.0, 255.0)


def color_jitter(img: np.ndarray,
                 order: Sequence[int],
                 brightness: Optional[float] = None,
                 contrast: Optional[float] = None,
                 saturation: Optional[float] = None,
                 hue: Optional[float] = None,
                 channel_order: str = 'bgr') -> np.ndarray:
    """Apply the four adjustments in ``order`` (0 brightness, 1 contrast, 2 saturation, 3 hue).

    A ``None`` factor skips that adjustment. Computation is in float32 with clipping to
    [0, 255] after every step (as torchvision's tensor path); the result is rounded once, at the
    end, and returned with the input dtype (uint8 input -> uint8 output).
    """
    _check_channel_order(channel_order)
    dtype = img.dtype
    out = np.asarray(img, dtype=np.float32)
    for i in order:
        if i == 0 and brightness is not None:
            out = adjust_brightness(out, brightness)
        elif i == 1 and contrast is not None:
            out = adjust_contrast(out, contrast, channel_order)
        elif i == 2 and saturation is not None:
            out = adjust_saturation(out, saturation, channel_order)
        elif i == 3 and hue is not None:
            out = adjust_hue(out, hue, channel_order)
    if np.issubdtype(dtype, np.integer):
        out = np.clip(np.rint(out), 0, 255)
    return out.astype(dtype)


def _jitter_range(value: Range, name: str, center: float, bound: Tuple[float, float]
                  ) -> Optional[Tuple[float, float]]:
    """torchvision's ``_check_input``: ``v -> [center - v, center + v]`` clamped at the bound."""
    if isinstance(value, numbers.Number):
        if value < 0:
            raise ValueError(f'{name} must be non-negative when a single number, got {value!r}')
        lo, hi = center - float(value), center + float(value)
        if center == 1.0:
            lo = max(lo, 0.0)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        lo, hi = float(value[0]), float(value[1])
    else:
        raise TypeError(f'{name} must be a number or a (min, max) pair, got {value!r}')
    if not bound[0] <= lo <= hi <= bound[1]:
        raise ValueError(f'{name} range must satisfy {bound[0]} <= min <= max <= {bound[1]}, '
                         f'got ({lo}, {hi})')
    if lo == hi == center:
        return None
    return lo, hi


def jitter_ranges(brightness: Range, contrast: Range, saturation: Range,
                  hue: Range) -> Dict[str, Optional[Tuple[float, float]]]:
    """torchvision ``ColorJitter``'s factor ranges (None = that op off), checked."""
    return dict(brightness=_jitter_range(brightness, 'brightness', 1.0, (0.0, math.inf)),
                contrast=_jitter_range(contrast, 'contrast', 1.0, (0.0, math.inf)),
                saturation=_jitter_range(saturation, 'saturation', 1.0, (0.0, math.inf)),
                hue=_jitter_range(hue, 'hue', 0.0, (-0.5, 0.5)))


@TRANSFORMS.register_module()
class HueSafeColorJitter(BaseTransform):
    """torchvision-style ColorJitter on numpy images, with a hue jitter that works under NumPy 2.

    Part of the student augmentation of CoTAP (`arXiv 2509.09429
    <https://arxiv.org/abs/2509.09429>`_; official: ``ColorJitter(0.8, 0.8, 0.8, 0.2)`` applied
    with probability 0.8). With probability ``prob`` the four adjustments are applied in a random
    order with factors drawn as in ``torchvision.transforms.ColorJitter``: brightness, contrast and
    saturation factors uniform in ``[max(0, 1 - v), 1 + v]`` (or the given ``(min, max)``), hue
    uniform in ``[-v, v]`` (``v <= 0.5``). See :func:`color_jitter` for the arithmetic.

    **Required keys:** ``img`` (``H x W x 3`` uint8 or float, or ``H x W``).
    **Modified keys:** ``img`` (same shape and dtype).

    Args:
        brightness (float | tuple[float, float]): Brightness jitter. Defaults to 0.
        contrast (float | tuple[float, float]): Contrast jitter. Defaults to 0.
        saturation (float | tuple[float, float]): Saturation jitter. Defaults to 0.
        hue (float | tuple[float, float]): Hue jitter in turns, within [-0.5, 0.5]. Defaults to 0.
        prob (float): Probability of applying the jitter at all (torchvision's
            ``RandomApply``). Defaults to 1.0.
        channel_order (str): 'bgr' (mmcv ``LoadImageFromFile``) or 'rgb'. Affects the luma
            weights and the hue direction. Defaults to 'bgr'.
    """

    def __init__(self,
                 brightness: Range = 0.,
                 contrast: Range = 0.,
                 saturation: Range = 0.,
                 hue: Range = 0.,
                 prob: float = 1.0,
                 channel_order: str = 'bgr') -> None:
        ranges = jitter_ranges(brightness, contrast, saturation, hue)
        self.brightness, self.contrast = ranges['brightness'], ranges['contrast']
        self.saturation, self.hue = ranges['saturation'], ranges['hue']
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f'prob must be in [0, 1], got {prob!r}')
        self.prob = float(prob)
        self.channel_order = _check_channel_order(channel_order)

    def _rand_params(self):
        order = np.random.permutation(4)
        b = None if self.brightness is None else float(np.random.uniform(*self.brightness))
        c = None if self.contrast is None else float(np.random.uniform(*self.contrast))
        s = None if self.saturation is None else float(np.random.uniform(*self.saturation))
        h = None if self.hue is None else float(np.random.uniform(*self.hue))
        return order, b, c, s, h

    def transform(self, results: Dict) -> Dict:
        if self.prob < 1.0 and np.random.rand() >= self.prob:
            return results
        order, b, c, s, h = self._rand_params()
        results['img'] = color_jitter(results['img'], order, b, c, s, h, self.channel_order)
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(brightness={self.brightness}, '
                f'contrast={self.contrast}, saturation={self.saturation}, hue={self.hue}, '
                f'prob={self.prob}, channel_order={self.channel_order!r})')


def gaussian_blur(img: np.ndarray, sigma: float, kernel_size: int = 7) -> np.ndarray:
    """Gaussian blur truncated to ``kernel_size`` with reflect padding (torchvision's semantics).

    Computed in float32 and rounded back to the input dtype.
    """
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be a positive odd int, got {kernel_size!r}')
    if not sigma > 0:
        raise ValueError(f'sigma must be > 0, got {sigma!r}')
    dtype = img.dtype
    out = cv2.GaussianBlur(np.asarray(img, dtype=np.float32), (kernel_size, kernel_size),
                           sigmaX=float(sigma), sigmaY=float(sigma),
                           borderType=cv2.BORDER_REFLECT_101)
    if out.ndim == 2 and img.ndim == 3:
        out = out[..., None]
    if np.issubdtype(dtype, np.integer):
        out = np.clip(np.rint(out), 0, 255)
    return out.astype(dtype)


@TRANSFORMS.register_module()
class RandomGaussianBlur(BaseTransform):
    """Random Gaussian blur with a fixed kernel size, as ``torchvision.transforms.GaussianBlur``.

    Student augmentation of CoTAP (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_;
    official: 7x7 kernel, sigma uniform in [0.1, 2.0], p=0.5).

    **Required keys:** ``img``. **Modified keys:** ``img`` (same shape and dtype).

    Args:
        sigma (tuple[float, float]): Range of the Gaussian std (pixels), sampled uniformly.
            Defaults to (0.1, 2.0).
        kernel_size (int): Odd kernel size. Defaults to 7.
        prob (float): Probability of blurring. Defaults to 0.5.
    """

    def __init__(self,
                 sigma: Tuple[float, float] = (0.1, 2.0),
                 kernel_size: int = 7,
                 prob: float = 0.5) -> None:
        if (not isinstance(sigma, (tuple, list)) or len(sigma) != 2
                or not 0 < float(sigma[0]) <= float(sigma[1])):
            raise ValueError(f'sigma must be a (min, max) pair with 0 < min <= max, got {sigma!r}')
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be a positive odd int, got {kernel_size!r}')
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f'prob must be in [0, 1], got {prob!r}')
        self.sigma = (float(sigma[0]), float(sigma[1]))
        self.kernel_size = kernel_size
        self.prob = float(prob)

    def transform(self, results: Dict) -> Dict:
        if self.prob < 1.0 and np.random.rand() >= self.prob:
            return results
        sigma = float(np.random.uniform(*self.sigma))
        results['img'] = gaussian_blur(results['img'], sigma, self.kernel_size)
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(sigma={self.sigma}, '
                f'kernel_size={self.kernel_size}, prob={self.prob})')


__all__ = [
    'LUMA_RGB', 'grayscale', 'jitter_ranges', 'adjust_brightness', 'adjust_contrast',
    'adjust_saturation',
    'adjust_hue', 'color_jitter', 'HueSafeColorJitter', 'gaussian_blur', 'RandomGaussianBlur'
]

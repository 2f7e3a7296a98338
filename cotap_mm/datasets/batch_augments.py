"""Colour augmentation of whole view batches, one parameter draw per view index (as released).

Released CoTAP (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_) colour-augments the student
crops on the GPU, after batching: for every crop index it calls one torchvision ``Compose`` on the
``[B, 3, H, W]`` tensor of that crop, so all images of the call share the same random parameters::

    RandomApply([ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8)  # order of the 4 ops drawn per call
    RandomGrayscale(p=0.2)
    RandomApply([GaussianBlur((7, 7), sigma=(0.1, 2.0))], p=0.5)

with separate calls for the anchors and their neighbours and for each data set (COCO, ImageNet);
the teacher's clean copies are never augmented. :class:`PerViewColorAugment` does this on the
student views of a :class:`~cotap_mm.datasets.transforms.formatting.PackGeometricViews` batch,
one draw per (view index, group), the groups given by data-sample metainfo (default ``source`` and
``is_neighbor``). The parameters are drawn from torch's global CPU generator in torchvision's order
(so a seeded run is reproducible, and equals torchvision's ``Compose`` under the same seed); the
arithmetic is in the small functions below, on any device, without host syncs.
"""
from dataclasses import dataclass
from typing import Any, Dict, Hashable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmpretrain.registry import BATCH_AUGMENTS

from .transforms.photometric import Range, jitter_ranges

__all__ = [
    'ColorParams', 'rgb_to_gray', 'rgb_to_hsv', 'hsv_to_rgb', 'adjust_brightness',
    'adjust_contrast', 'adjust_saturation', 'adjust_hue', 'gaussian_blur', 'draw_color_params',
    'apply_color_params', 'PerViewColorAugment'
]

#: luma weights of torchvision's ``rgb_to_grayscale`` (what the release uses).
GRAY_RGB = (0.2989, 0.587, 0.114)


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """Luma ``0.2989 R + 0.587 G + 0.114 B`` of ``[..., 3, H, W]``, shape ``[..., 1, H, W]``."""
    r, g, b = x.unbind(-3)
    return (GRAY_RGB[0] * r + GRAY_RGB[1] * g + GRAY_RGB[2] * b).unsqueeze(-3)


def adjust_brightness(x: torch.Tensor, factor: float, max_value: float = 255.) -> torch.Tensor:
    """``clamp(factor * x, 0, max_value)``."""
    return (x * factor).clamp(0., max_value)


def adjust_contrast(x: torch.Tensor, factor: float, max_value: float = 255.) -> torch.Tensor:
    """Blend with each image's mean luma: ``clamp(f x + (1 - f) mean(gray(x)))``."""
    mean = rgb_to_gray(x).mean(dim=(-3, -2, -1), keepdim=True)
    return (factor * x + (1. - factor) * mean).clamp(0., max_value)


def adjust_saturation(x: torch.Tensor, factor: float, max_value: float = 255.) -> torch.Tensor:
    """Blend with the grayscale image: ``clamp(f x + (1 - f) gray(x))``."""
    return (factor * x + (1. - factor) * rgb_to_gray(x)).clamp(0., max_value)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] ``[..., 3, H, W]`` -> HSV, hue in turns [0, 1) (sextant formula; ties: the
    first of R, G, B holding the maximum decides)."""
    r, g, b = x.unbind(-3)
    v = x.amax(-3)
    chroma = v - x.amin(-3)
    safe_c = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    s = torch.where(v > 0, chroma / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    h6 = torch.where(r == v, (g - b) / safe_c,
                     torch.where(g == v, 2. + (b - r) / safe_c, 4. + (r - g) / safe_c))
    h = torch.remainder(h6 / 6., 1.)
    h = torch.where(chroma > 0, h, torch.zeros_like(h))
    return torch.stack([h, s, v], -3)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """HSV (hue in turns) ``[..., 3, H, W]`` -> RGB: channel ``n`` in (R 5, G 3, B 1) is
    ``v - v s clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h) mod 6``."""
    h, s, v = x.unbind(-3)
    out = []
    for n in (5., 3., 1.):
        k = torch.remainder(n + 6. * h, 6.)
        out.append(v - v * s * torch.minimum(k, 4. - k).clamp(0., 1.))
    return torch.stack(out, -3)


def adjust_hue(x: torch.Tensor, factor: float, max_value: float = 255.) -> torch.Tensor:
    """Rotate the HSV hue by ``factor`` turns (``|factor| <= 0.5``); values in [0, max_value]."""
    hsv = rgb_to_hsv(x / max_value)
    h, s, v = hsv.unbind(-3)
    rgb = hsv_to_rgb(torch.stack([torch.remainder(h + factor, 1.), s, v], -3))
    return rgb * max_value


def gaussian_blur(x: torch.Tensor, sigma: float, kernel_size: int = 7) -> torch.Tensor:
    """Gaussian blur of ``[B, C, H, W]`` truncated to ``kernel_size`` taps, normalised, reflect
    padding (separable; torchvision's ``GaussianBlur`` kernel)."""
    half = (kernel_size - 1) / 2.
    taps = torch.arange(kernel_size, dtype=x.dtype, device=x.device) - half
    k1d = torch.exp(-0.5 * (taps / sigma) ** 2)
    k1d = k1d / k1d.sum()
    c = x.shape[1]
    pad = kernel_size // 2
    y = F.pad(x, (pad, pad, pad, pad), mode='reflect')
    y = F.conv2d(y, k1d.view(1, 1, 1, -1).expand(c, 1, 1, kernel_size), groups=c)
    return F.conv2d(y, k1d.view(1, 1, -1, 1).expand(c, 1, kernel_size, 1), groups=c)


@dataclass
class ColorParams:
    """One draw of the released colour augmentation.

    Attributes:
        jitter (bool): colour jitter applied.
        order (tuple[int, ...]): order of the jitter ops (0 brightness, 1 contrast, 2 saturation,
            3 hue); empty without jitter.
        brightness, contrast, saturation, hue (float, optional): jitter factors (None = op off).
        gray (bool): converted to grayscale (3 equal channels).
        sigma (float, optional): blur sigma (None = no blur).
    """
    jitter: bool
    order: Tuple[int, ...] = ()
    brightness: Optional[float] = None
    contrast: Optional[float] = None
    saturation: Optional[float] = None
    hue: Optional[float] = None
    gray: bool = False
    sigma: Optional[float] = None


def _uniform(lo: float, hi: float, generator: Optional[torch.Generator]) -> float:
    return float(torch.empty(1).uniform_(lo, hi, generator=generator))


def draw_color_params(ranges: Dict[str, Optional[Tuple[float, float]]],
                      jitter_prob: float,
                      gray_prob: float,
                      blur_prob: float,
                      sigma: Tuple[float, float],
                      generator: Optional[torch.Generator] = None) -> ColorParams:
    """Draw one :class:`ColorParams` from a CPU generator, in torchvision's order.

    ``RandomApply(p)`` applies when ``rand <= p``; then ``ColorJitter`` draws ``randperm(4)`` and
    the brightness, contrast, saturation and hue factors (those with a range); ``RandomGrayscale``
    applies when ``rand < gray_prob``; the blur ``RandomApply`` when ``rand <= blur_prob``, then
    sigma ``~ U(sigma)``. Host-side only (CPU scalars), never a device sync.

    Args:
        ranges (dict): ``brightness`` / ``contrast`` / ``saturation`` / ``hue`` -> ``(min, max)``
            or None (off), as :func:`~cotap_mm.datasets.transforms.photometric.jitter_ranges`
            returns them.
        jitter_prob, gray_prob, blur_prob (float): probabilities in [0, 1].
        sigma (tuple[float, float]): blur sigma range.
        generator (torch.Generator, optional): CPU generator; None = torch's global one.
    """
    p = ColorParams(jitter=not jitter_prob < float(torch.rand(1, generator=generator)))
    if p.jitter:
        p.order = tuple(int(i) for i in torch.randperm(4, generator=generator))
        for name in ('brightness', 'contrast', 'saturation', 'hue'):
            rng = ranges[name]
            if rng is not None:
                setattr(p, name, _uniform(rng[0], rng[1], generator))
    p.gray = float(torch.rand(1, generator=generator)) < gray_prob
    if not blur_prob < float(torch.rand(1, generator=generator)):
        p.sigma = _uniform(sigma[0], sigma[1], generator)
    return p


def apply_color_params(x: torch.Tensor, params: ColorParams, max_value: float = 255.,
                       kernel_size: int = 7) -> torch.Tensor:
    """Apply one draw to RGB images ``[B, 3, H, W]`` (float, values in [0, max_value])."""
    if params.jitter:
        ops = {0: (adjust_brightness, params.brightness), 1: (adjust_contrast, params.contrast),
               2: (adjust_saturation, params.saturation), 3: (adjust_hue, params.hue)}
        for i in params.order:
            fn, factor = ops[i]
            if factor is not None:
                x = fn(x, factor, max_value)
    if params.gray:
        x = rgb_to_gray(x).expand_as(x).contiguous()
    if params.sigma is not None:
        x = gaussian_blur(x, params.sigma, kernel_size)
    return x


def _prob(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0. <= value <= 1.:
        raise ValueError(f'PerViewColorAugment: {name} must be a probability in [0, 1], got '
                         f'{value!r}')
    return float(value)


@BATCH_AUGMENTS.register_module()
class PerViewColorAugment:
    """Released CoTAP colour augmentation: one draw per student view index (and group).

    Paper: `arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_. For every student view ``v``
    (``inputs[:V]``, ``V = data_samples[0].num_student_views``) and every group of samples (equal
    values of the ``group_keys`` metainfo), one :class:`ColorParams` is drawn
    (:func:`draw_color_params`) and applied to all images of that group in ``inputs[v]``. Teacher
    views (``inputs[V:]``) are returned unchanged. Run by
    :class:`~cotap_mm.datasets.data_preprocessor.CoTAPDataPreprocessor` on RGB float views in
    [0, 255] before normalisation. Per-image jitter instead: the data pipeline's
    ``HueSafeColorJitter`` / ``RandomGrayscale`` / ``RandomGaussianBlur`` (``student_pipeline`` of
    ``GeometricMultiView``).

    Args:
        brightness, contrast, saturation (float | tuple[float, float]): jitter as
            ``torchvision.transforms.ColorJitter``. Defaults to 0.8 (released).
        hue (float | tuple[float, float]): hue jitter in turns, within [-0.5, 0.5]. Defaults to
            0.2 (released).
        jitter_prob (float): probability of the colour jitter. Defaults to 0.8.
        gray_prob (float): probability of grayscale. Defaults to 0.2.
        blur_prob (float): probability of the blur. Defaults to 0.5.
        sigma (tuple[float, float]): blur sigma range (pixels). Defaults to (0.1, 2.0).
        kernel_size (int): odd blur kernel size. Defaults to 7.
        group_keys (Sequence[str]): data-sample metainfo keys whose values split a batch into
            groups drawn separately (missing keys count as None). Defaults to
            ``('source', 'is_neighbor')`` (released: anchors, neighbours and each data set apart);
            ``()`` = one draw per view for the whole batch.
        max_value (float): value of white. Defaults to 255.
    """

    def __init__(self,
                 brightness: Range = 0.8,
                 contrast: Range = 0.8,
                 saturation: Range = 0.8,
                 hue: Range = 0.2,
                 jitter_prob: float = 0.8,
                 gray_prob: float = 0.2,
                 blur_prob: float = 0.5,
                 sigma: Tuple[float, float] = (0.1, 2.0),
                 kernel_size: int = 7,
                 group_keys: Sequence[str] = ('source', 'is_neighbor'),
                 max_value: float = 255.) -> None:
        try:
            self.ranges = jitter_ranges(brightness, contrast, saturation, hue)
        except (TypeError, ValueError) as e:
            raise type(e)(f'PerViewColorAugment: {e}') from e
        self.jitter_prob = _prob(jitter_prob, 'jitter_prob')
        self.gray_prob = _prob(gray_prob, 'gray_prob')
        self.blur_prob = _prob(blur_prob, 'blur_prob')
        if (not isinstance(sigma, (tuple, list)) or len(sigma) != 2
                or not all(isinstance(v, (int, float)) for v in sigma)
                or not 0 < sigma[0] <= sigma[1]):
            raise ValueError(f'PerViewColorAugment: sigma must be a (min, max) pair with '
                             f'0 < min <= max, got {sigma!r}')
        self.sigma = (float(sigma[0]), float(sigma[1]))
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 \
                or kernel_size % 2 == 0:
            raise ValueError(f'PerViewColorAugment: kernel_size must be a positive odd int, got '
                             f'{kernel_size!r}')
        self.kernel_size = kernel_size
        if isinstance(group_keys, str) or not all(isinstance(k, str) for k in group_keys):
            raise TypeError(f'PerViewColorAugment: group_keys must be a sequence of metainfo key '
                            f'names, got {group_keys!r}')
        self.group_keys = tuple(group_keys)
        if not max_value > 0:
            raise ValueError(f'PerViewColorAugment: max_value must be > 0, got {max_value!r}')
        self.max_value = float(max_value)

    def draw(self, generator: Optional[torch.Generator] = None) -> ColorParams:
        """One parameter draw (:func:`draw_color_params`)."""
        return draw_color_params(self.ranges, self.jitter_prob, self.gray_prob, self.blur_prob,
                                 self.sigma, generator)

    def groups(self, data_samples: Sequence[Any]) -> List[List[int]]:
        """Row indices of each group, groups in order of first appearance."""
        rows: Dict[Tuple[Hashable, ...], List[int]] = {}
        for i, sample in enumerate(data_samples):
            meta = sample.metainfo if hasattr(sample, 'metainfo') else {}
            rows.setdefault(tuple(meta.get(k) for k in self.group_keys), []).append(i)
        return list(rows.values())

    def __call__(self, inputs: Sequence[torch.Tensor], data_samples: Sequence[Any]
                 ) -> List[torch.Tensor]:
        """Augment the student views of a packed multi-view batch.

        Args:
            inputs (Sequence[Tensor]): ``V + T`` float RGB view batches ``[B, 3, H, W]``.
            data_samples (Sequence[DataSample]): ``B`` samples; metainfo ``num_student_views``
                (V) and the ``group_keys``.

        Returns:
            list[Tensor]: augmented student views, then the teacher views unchanged.
        """
        if not isinstance(inputs, (list, tuple)) or not data_samples:
            raise TypeError('PerViewColorAugment expects inputs as a list of view batches '
                            '[B, 3, H, W] and a non-empty list of data samples')
        meta = data_samples[0].metainfo
        if 'num_student_views' not in meta:
            raise KeyError("PerViewColorAugment: data_samples need metainfo 'num_student_views' "
                           '(PackGeometricViews) to tell student from teacher views')
        num_student = int(meta['num_student_views'])
        if not 0 <= num_student <= len(inputs):
            raise ValueError(f'PerViewColorAugment: num_student_views={num_student} but only '
                             f'{len(inputs)} views')
        groups = self.groups(data_samples)
        out = list(inputs)
        for v in range(num_student):
            x = inputs[v]
            if x.ndim != 4 or x.shape[1] != 3 or x.shape[0] != len(data_samples):
                raise ValueError(f'PerViewColorAugment: view {v} must be [B={len(data_samples)}, '
                                 f'3, H, W], got {tuple(x.shape)}')
            if not x.is_floating_point():
                raise TypeError(f'PerViewColorAugment: view {v} must be float, got {x.dtype}')
            if len(groups) == 1:
                out[v] = apply_color_params(x, self.draw(), self.max_value, self.kernel_size)
                continue
            y = torch.empty_like(x)
            for rows in groups:
                # non_blocking: a pageable host -> device copy that does not wait for the device
                idx = torch.tensor(rows, dtype=torch.long).to(x.device, non_blocking=True)
                y.index_copy_(0, idx, apply_color_params(x.index_select(0, idx), self.draw(),
                                                         self.max_value, self.kernel_size))
            out[v] = y
        return out

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(ranges={self.ranges}, jitter_prob={self.jitter_prob}, '
                f'gray_prob={self.gray_prob}, blur_prob={self.blur_prob}, sigma={self.sigma}, '
                f'kernel_size={self.kernel_size}, group_keys={self.group_keys})')

"""Two shims that let stock mmpretrain / mmseg / mmdet configs run in this environment.

* **mmcv 2.1.0's ``adjust_hue`` under NumPy 2.** It shifts the uint8 hue channel by
  ``np.uint8(hue_factor * 255)``: NumPy 1 wrapped a negative shift modulo 256 (``-16`` -> 240),
  NumPy 2 raises ``OverflowError: Python integer -16 out of bounds for uint8``, so mmpretrain's
  ``ColorJitter`` with ``hue > 0`` (e.g. its MoCo v3 configs) dies in the data workers about every
  second image. :func:`adjust_hue` is mmcv's function with that one cast done as NumPy 1 did it
  (truncate toward zero, then modulo 256), so it returns what mmcv returned under NumPy 1.
  :func:`install_hue_fix` puts it in place of ``mmcv.adjust_hue`` (and the names mmcv exports it
  under) when NumPy raises on that cast.
* **``_scope_`` in a collate function's config.** A config inheriting another package's config
  (``_base_ = 'mmpretrain::...'``) gets ``_scope_='mmpretrain'`` in every dict that has a
  ``type``, ``collate_fn=dict(type='default_collate')`` included; MMEngine's
  ``Runner.build_dataloader`` passes every key but ``type`` to the function
  (``TypeError: default_collate() got an unexpected keyword argument '_scope_'``).
  :func:`resolve_collate_scope` looks the function up in that scope's registry instead, as
  ``_scope_`` means everywhere else; :func:`install_collate_scope_fix` applies it in
  ``Runner.build_dataloader`` (and ``FlexibleRunner``'s).

:func:`install_openmmlab_compat` installs both (idempotent; one DEBUG log line each); ``import
cotap_mm`` calls it.
"""
import copy
import functools
import logging
from typing import Any, Optional

import cv2
import numpy as np
from mmengine.logging import print_log

__all__ = ['adjust_hue', 'numpy_hue_cast_raises', 'install_hue_fix', 'resolve_collate_scope',
           'install_collate_scope_fix', 'install_openmmlab_compat']


def _numpy1_uint8(value: float) -> np.uint8:
    """``np.uint8(value)`` as NumPy 1 computed it for a float: truncate toward zero, wrap mod 256."""
    return np.uint8(int(value) % 256)


def adjust_hue(img: np.ndarray, hue_factor: float, backend: Optional[str] = None) -> np.ndarray:
    """mmcv 2.1.0's ``mmcv.adjust_hue`` with NumPy 1's uint8 cast of the hue shift.

    Args:
        img (ndarray): image (BGR), 2 or 3 dims.
        hue_factor (float): hue shift in turns, in [-0.5, 0.5].
        backend (str, optional): ``'cv2'`` or ``'pillow'``; None: mmcv's ``imread_backend``.

    Returns:
        ndarray: the hue-shifted image, of the input's dtype.
    """
    from mmcv.image import photometric
    from PIL import Image
    if backend is None:
        backend = photometric.imread_backend
    if backend not in ['cv2', 'pillow']:
        raise ValueError(f'backend: {backend} is not supported.'
                         f"Supported backends are 'cv2', 'pillow'")
    if not (-0.5 <= hue_factor <= 0.5):
        raise ValueError(f'hue_factor:{hue_factor} is not in [-0.5, 0.5].')
    if not (isinstance(img, np.ndarray) and (img.ndim in {2, 3})):
        raise TypeError('img should be ndarray with dim=[2 or 3].')
    shift = _numpy1_uint8(hue_factor * 255)
    if backend == 'pillow':
        assert img.dtype == np.uint8, 'Pillow backend only support uint8 type'
        pil_image = Image.fromarray(img[..., ::-1], mode='RGB')
        input_mode = pil_image.mode
        if input_mode in {'L', '1', 'I', 'F'}:
            return pil_image
        h, s, v = pil_image.convert('HSV').split()
        np_h = np.array(h, dtype=np.uint8)
        with np.errstate(over='ignore'):  # uint8 addition wraps across the hue circle
            np_h += shift
        h = Image.fromarray(np_h, 'L')
        pil_image = Image.merge('HSV', (h, s, v)).convert(input_mode)
        return np.array(pil_image, dtype=img.dtype)[..., ::-1]
    dtype = img.dtype
    img = img.astype(np.uint8)
    h, s, v = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV_FULL))
    h = h.astype(np.uint8)
    with np.errstate(over='ignore'):
        h += shift
    return cv2.cvtColor(cv2.merge([h, s, v]), cv2.COLOR_HSV2BGR_FULL).astype(dtype)


def numpy_hue_cast_raises() -> bool:
    """Whether this NumPy raises on mmcv's ``np.uint8(negative float)`` (NumPy >= 2)."""
    try:
        np.uint8(-0.1 * 255)
    except OverflowError:
        return True
    return False


def install_hue_fix() -> bool:
    """Replace ``mmcv.adjust_hue`` by :func:`adjust_hue` where NumPy raises on its cast.

    Returns:
        bool: True if installed now, False if not needed or already installed.
    """
    import mmcv
    import mmcv.image
    import mmcv.image.photometric
    if not numpy_hue_cast_raises() or getattr(mmcv.adjust_hue, '_cotap_compat', False):
        return False
    adjust_hue._cotap_compat = True
    adjust_hue.mmcv_original = mmcv.adjust_hue  # kept: right for hue_factor >= 0
    for module in (mmcv, mmcv.image, mmcv.image.photometric):
        module.adjust_hue = adjust_hue
    print_log(f'cotap_mm: mmcv.adjust_hue replaced by {__name__}.adjust_hue (mmcv '
              f'{mmcv.__version__} casts a negative hue shift to uint8, which NumPy '
              f'{np.__version__} refuses; same values as under NumPy 1)', logger='current',
              level=logging.DEBUG)
    return True


def resolve_collate_scope(dataloader: Any) -> Any:
    """A dataloader config whose ``collate_fn`` carries ``_scope_``: a copy whose ``collate_fn``
    type is the function looked up in that scope's ``FUNCTIONS`` registry (no ``_scope_`` key).
    Anything else (a DataLoader, no ``_scope_``) is returned unchanged.

    Raises:
        KeyError: the scope's registry has no such function (naming both).
    """
    collate = dataloader.get('collate_fn') if isinstance(dataloader, dict) else None
    if not isinstance(collate, dict) or '_scope_' not in collate:
        return dataloader
    from mmengine.registry import FUNCTIONS
    collate = dict(collate)
    scope = collate.pop('_scope_')
    fn = collate.get('type')
    if isinstance(fn, str):
        with FUNCTIONS.switch_scope_and_registry(scope) as registry:
            found = registry.get(fn)
        if found is None:
            raise KeyError(f"collate_fn type {fn!r} (_scope_={scope!r}) is not in the FUNCTIONS "
                           f'registry of {scope!r}')
        collate['type'] = found
    out = copy.copy(dataloader)
    out['collate_fn'] = collate
    return out


def _patch_build_dataloader(runner_cls: type) -> bool:
    original = runner_cls.__dict__['build_dataloader'].__func__
    if getattr(original, '_cotap_compat', False):
        return False

    @functools.wraps(original)
    def build_dataloader(dataloader, *args, **kwargs):
        return original(resolve_collate_scope(dataloader), *args, **kwargs)

    build_dataloader._cotap_compat = True
    runner_cls.build_dataloader = staticmethod(build_dataloader)
    return True


def install_collate_scope_fix() -> bool:
    """Resolve ``collate_fn._scope_`` in ``Runner.build_dataloader`` and ``FlexibleRunner``'s.

    Returns:
        bool: True if installed now, False if already installed.
    """
    from mmengine.runner import FlexibleRunner, Runner
    done = [_patch_build_dataloader(cls) for cls in (Runner, FlexibleRunner)]
    if any(done):
        print_log('cotap_mm: Runner.build_dataloader resolves collate_fn._scope_ (configs '
                  "inheriting 'mmpretrain::...' no longer pass it to the collate function)",
                  logger='current', level=logging.DEBUG)
    return any(done)


def install_openmmlab_compat() -> None:
    """Install :func:`install_hue_fix` and :func:`install_collate_scope_fix` (idempotent)."""
    install_hue_fix()
    install_collate_scope_fix()

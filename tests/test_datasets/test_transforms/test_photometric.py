import colorsys

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from cotap_mm.datasets.transforms.photometric import (HueSafeColorJitter, RandomGaussianBlur,
                                                      adjust_hue, color_jitter, gaussian_blur,
                                                      grayscale)
from mmpretrain.registry import TRANSFORMS


def _rand_img(h=9, w=11, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


def _tv(img_rgb_uint8):
    """uint8 HxWx3 -> float tensor 3xHxW in [0, 1] (torchvision reference input)."""
    return torch.from_numpy(img_rgb_uint8).permute(2, 0, 1).float() / 255.0


def _from_tv(t):
    return t.permute(1, 2, 0).numpy() * 255.0


# ----------------------------------------------------------------------------- hue
@pytest.mark.parametrize('channel_order', ['rgb', 'bgr'])
def test_hue_shift_of_pure_red(channel_order):
    red_rgb = np.zeros((4, 5, 3), np.uint8)
    red_rgb[..., 0] = 255
    conv = (lambda x: x) if channel_order == 'rgb' else (lambda x: x[..., ::-1].copy())
    for factor, expect_rgb in ((1 / 3, (0, 255, 0)), (-1 / 3, (0, 0, 255)), (0.5, (0, 255, 255))):
        t = HueSafeColorJitter(hue=(factor, factor), channel_order=channel_order)
        out = t(dict(img=conv(red_rgb)))['img']
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(conv(out), np.broadcast_to(expect_rgb, out.shape))


def test_adjust_hue_matches_colorsys():
    img = _rand_img(6, 7, seed=1)  # RGB
    for factor in (-0.5, -0.27, -0.01, 0.13, 0.4):
        out = adjust_hue(img.astype(np.float32), factor, 'rgb')
        ref = np.empty_like(out)
        for i in range(img.shape[0]):
            for j in range(img.shape[1]):
                h, s, v = colorsys.rgb_to_hsv(*(img[i, j] / 255.0))
                ref[i, j] = np.array(colorsys.hsv_to_rgb((h + factor) % 1.0, s, v)) * 255.0
        np.testing.assert_allclose(out, ref, atol=1e-3)
        # torchvision as a second reference
        tv = _from_tv(TF.adjust_hue(_tv(img), factor))
        np.testing.assert_allclose(out, tv, atol=1e-2)


def test_negative_hue_factors_do_not_raise_and_stay_in_range():
    np.random.seed(0)
    t = HueSafeColorJitter(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.5)
    for i in range(50):
        img = _rand_img(seed=i)
        out = t(dict(img=img))['img']
        assert out.dtype == np.uint8 and out.shape == img.shape
    out = adjust_hue(_rand_img().astype(np.float32), -0.5, 'bgr')
    assert out.min() >= 0 and out.max() <= 255
    with pytest.raises(ValueError, match='hue factor'):
        adjust_hue(_rand_img(), 0.6)


def test_identity_when_all_factors_zero():
    img = _rand_img()
    np.random.seed(0)
    out = HueSafeColorJitter()(dict(img=img.copy()))['img']
    np.testing.assert_array_equal(out, img)
    # prob=0 leaves the image untouched as well
    out = HueSafeColorJitter(brightness=0.9, hue=0.3, prob=0.0)(dict(img=img.copy()))['img']
    np.testing.assert_array_equal(out, img)


# ----------------------------------------------------------------------------- full jitter
@pytest.mark.parametrize('order', [(0, 1, 2, 3), (3, 2, 1, 0), (2, 0, 3, 1)])
def test_color_jitter_matches_torchvision(order):
    img = _rand_img(8, 10, seed=3)  # treat as RGB
    b, c, s, h = 1.3, 0.6, 1.7, -0.15
    ours = color_jitter(img, order, b, c, s, h, channel_order='rgb')
    ref = _tv(img)
    for i in order:
        ref = [lambda x: TF.adjust_brightness(x, b), lambda x: TF.adjust_contrast(x, c),
               lambda x: TF.adjust_saturation(x, s), lambda x: TF.adjust_hue(x, h)][i](ref)
    ref = np.clip(np.rint(_from_tv(ref)), 0, 255)
    # torchvision's luma weight for R is 0.2989 (ours 0.299) and it rounds differently: +-1
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1
    # BGR input gives the channel-reversed result of the RGB computation
    ours_bgr = color_jitter(img[..., ::-1].copy(), order, b, c, s, h, channel_order='bgr')
    np.testing.assert_array_equal(ours_bgr[..., ::-1], ours)


def test_jitter_factor_sampling_and_random_order():
    t = HueSafeColorJitter(brightness=0.4, contrast=(0.5, 0.7), saturation=0.0, hue=0.1)
    assert t.brightness == (0.6, 1.4) and t.contrast == (0.5, 0.7)
    assert t.saturation is None and t.hue == (-0.1, 0.1)
    assert HueSafeColorJitter(brightness=2.0).brightness == (0.0, 3.0)
    np.random.seed(0)
    orders = set()
    for _ in range(30):
        order, b, c, s, h = t._rand_params()
        orders.add(tuple(order))
        assert 0.6 <= b <= 1.4 and 0.5 <= c <= 0.7 and s is None and -0.1 <= h <= 0.1
    assert len(orders) > 5


def test_jitter_argument_errors():
    with pytest.raises(ValueError, match='brightness'):
        HueSafeColorJitter(brightness=-0.1)
    with pytest.raises(ValueError, match='hue'):
        HueSafeColorJitter(hue=0.6)
    with pytest.raises(TypeError, match='contrast'):
        HueSafeColorJitter(contrast='x')
    with pytest.raises(ValueError, match='channel_order'):
        HueSafeColorJitter(channel_order='hsv')
    with pytest.raises(ValueError, match='prob'):
        HueSafeColorJitter(prob=1.5)


def test_grayscale_inputs_are_handled():
    g = np.random.RandomState(0).randint(0, 256, (5, 6), dtype=np.uint8)
    out = color_jitter(g, (0, 1, 2, 3), 1.2, 0.8, 0.3, 0.2)
    ref = np.clip(np.rint(np.clip(g * 1.2, 0, 255) * 0.8 + 0.2 * np.clip(g * 1.2, 0, 255).mean()),
                  0, 255)
    np.testing.assert_array_equal(out, ref.astype(np.uint8))


# ----------------------------------------------------------------------------- grayscale / blur
def test_mmcv_random_grayscale_reused_on_bgr_crops():
    img = _rand_img()  # BGR
    t = TRANSFORMS.build(dict(type='RandomGrayscale', prob=1.0, keep_channels=True,
                              channel_weights=(0.114, 0.587, 0.299)))
    out = t(dict(img=img.copy()))['img']
    ref = grayscale(img, 'bgr')
    assert out.shape == img.shape
    for k in range(3):
        assert np.abs(out[..., k].astype(float) - ref).max() <= 1.0  # mmcv truncates


@pytest.mark.parametrize('sigma', [0.1, 0.7, 2.0])
def test_gaussian_blur_matches_torchvision(sigma):
    img = _rand_img(12, 15, seed=2)
    ours = gaussian_blur(img, sigma, 7)
    ref = TF.gaussian_blur(torch.from_numpy(img).permute(2, 0, 1).float(), [7, 7], [sigma, sigma])
    ref = np.clip(np.rint(ref.permute(1, 2, 0).numpy()), 0, 255)
    assert ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1


def test_random_gaussian_blur_transform():
    img = _rand_img()
    np.random.seed(0)
    t = TRANSFORMS.build(dict(type='RandomGaussianBlur', sigma=(1.0, 1.0), prob=1.0))
    np.testing.assert_array_equal(t(dict(img=img.copy()))['img'], gaussian_blur(img, 1.0, 7))
    t0 = RandomGaussianBlur(prob=0.0)
    np.testing.assert_array_equal(t0(dict(img=img.copy()))['img'], img)
    with pytest.raises(ValueError, match='kernel_size'):
        RandomGaussianBlur(kernel_size=4)
    with pytest.raises(ValueError, match='sigma'):
        RandomGaussianBlur(sigma=(0.0, 1.0))

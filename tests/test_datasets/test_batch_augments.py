"""PerViewColorAugment / CoTAPDataPreprocessor: the released colour augmentation, one draw per view.

References: torchvision's functional ops and the released ``Compose`` (RandomApply(ColorJitter(0.8,
0.8, 0.8, 0.2), p=0.8), RandomGrayscale(0.2), RandomApply(GaussianBlur((7, 7), (0.1, 2)), p=0.5))
on [0, 1] images, Python's ``colorsys``, and hand-computed values.
"""
import colorsys
import math
import os.path as osp

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from mmengine.config import Config
from mmpretrain.models.utils import SelfSupDataPreprocessor
from mmpretrain.registry import BATCH_AUGMENTS, MODELS, TRANSFORMS
from mmpretrain.structures import DataSample

import cotap_mm  # noqa: F401
from cotap_mm.datasets.batch_augments import (ColorParams, PerViewColorAugment, adjust_brightness,
                                              adjust_contrast, adjust_hue, adjust_saturation,
                                              apply_color_params, gaussian_blur, hsv_to_rgb,
                                              rgb_to_gray, rgb_to_hsv)
from cotap_mm.datasets.data_preprocessor import CoTAPDataPreprocessor
from cotap_mm.datasets.transforms.formatting import PackGeometricViews
from cotap_mm.datasets.transforms.geometric_views import GeometricMultiView
from cotap_test_helpers.tiny_runs import REPO_ROOT

MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def released_compose():
    """The release's student colour transform (on [0, 1] float tensors)."""
    return T.Compose([
        T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur((7, 7), sigma=[0.1, 2.])], p=0.5),
    ])


def images(b=3, h=12, w=10, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


def test_ops_match_torchvision():
    x = images()
    ref = lambda fn, *a: fn(x / 255, *a) * 255  # noqa: E731
    for f in (0.3, 1.7):
        torch.testing.assert_close(adjust_brightness(x, f), ref(TF.adjust_brightness, f),
                                   atol=2e-3, rtol=0)
        torch.testing.assert_close(adjust_contrast(x, f), ref(TF.adjust_contrast, f),
                                   atol=2e-3, rtol=0)
        torch.testing.assert_close(adjust_saturation(x, f), ref(TF.adjust_saturation, f),
                                   atol=2e-3, rtol=0)
    for h in (-0.5, -0.2, 0.13, 0.5):
        torch.testing.assert_close(adjust_hue(x, h), ref(TF.adjust_hue, h), atol=2e-3, rtol=0)
    torch.testing.assert_close(rgb_to_gray(x).expand_as(x), ref(TF.rgb_to_grayscale, 3),
                               atol=2e-3, rtol=0)
    for sigma in (0.1, 0.7, 2.0):
        torch.testing.assert_close(gaussian_blur(x, sigma, 7),
                                   ref(TF.gaussian_blur, [7, 7], [sigma, sigma]),
                                   atol=2e-3, rtol=0)


def test_ops_against_hand_values():
    # brightness clamps at white; grayscale weights; contrast blends with the mean luma
    px = torch.tensor([200., 100., 50.]).view(1, 3, 1, 1)
    torch.testing.assert_close(adjust_brightness(px, 1.5).flatten(),
                               torch.tensor([255., 150., 75.]))
    gray = 0.2989 * 200 + 0.587 * 100 + 0.114 * 50
    torch.testing.assert_close(rgb_to_gray(px).flatten(), torch.tensor([gray]))
    torch.testing.assert_close(adjust_contrast(px, 0.5).flatten(),
                               0.5 * px.flatten() + 0.5 * gray)
    # hue: a quarter turn against Python's colorsys, pixel by pixel
    x = images(b=1, h=4, w=5, seed=1)
    got = adjust_hue(x, 0.25)
    for i in range(4):
        for j in range(5):
            h, s, v = colorsys.rgb_to_hsv(*(x[0, :, i, j] / 255).tolist())
            want = colorsys.hsv_to_rgb((h + 0.25) % 1.0, s, v)
            np.testing.assert_allclose(got[0, :, i, j].numpy() / 255, want, atol=1e-5)
    hsv_round = hsv_to_rgb(rgb_to_hsv(x / 255)) * 255
    torch.testing.assert_close(hsv_round, x, atol=1e-3, rtol=0)
    # blur of a centred delta = the outer product of the normalised 7-tap Gaussian
    delta = torch.zeros(1, 3, 9, 9)
    delta[:, :, 4, 4] = 1.
    taps = [math.exp(-0.5 * (t / 1.3) ** 2) for t in range(-3, 4)]
    k = torch.tensor(taps) / sum(taps)
    torch.testing.assert_close(gaussian_blur(delta, 1.3)[0, 0, 1:8, 1:8], torch.outer(k, k))


def test_fixed_parameters_apply_in_order():
    x = images(seed=2)
    p = ColorParams(jitter=True, order=(3, 0, 2, 1), brightness=1.4, contrast=0.6,
                    saturation=1.2, hue=-0.1, gray=True, sigma=0.9)
    want = adjust_contrast(adjust_saturation(adjust_brightness(adjust_hue(x, -0.1), 1.4), 1.2), 0.6)
    want = gaussian_blur(rgb_to_gray(want).expand_as(want).contiguous(), 0.9)
    torch.testing.assert_close(apply_color_params(x, p), want)
    assert torch.equal(apply_color_params(x, ColorParams(jitter=False)), x)


def test_seeded_draws_equal_the_released_compose():
    """Same global seed -> our draw + apply equals torchvision's released Compose on the batch
    (the draws consume the generator in torchvision's order; all branches are hit)."""
    aug = PerViewColorAugment(group_keys=())
    x = images(b=2, h=16, w=16, seed=3)
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        ref = released_compose()(x / 255) * 255
        torch.manual_seed(seed)
        p = aug.draw()
        torch.testing.assert_close(apply_color_params(x, p), ref, atol=2e-3, rtol=0)
        seen.add((p.jitter, p.gray, p.sigma is not None))
    assert len(seen) >= 6  # jitter / grayscale / blur on and off in most combinations


def _batch(V=3, T=2, B=6, seed=4):
    """V student + T teacher views, every row of every view the same image; rows in 4 groups."""
    img = images(b=1, h=16, w=16, seed=seed)
    inputs = [img.expand(B, -1, -1, -1).clone() for _ in range(V + T)]
    groups = [('coco', False), ('coco', True), ('imagenet', False), ('imagenet', True)]
    samples = []
    for i in range(B):
        s = DataSample(metainfo=dict(num_student_views=V, num_teacher_views=T))
        s.set_metainfo(dict(source=groups[i % 4][0], is_neighbor=groups[i % 4][1]))
        samples.append(s)
    return inputs, samples


def test_one_draw_per_view_and_group_teacher_untouched():
    aug = PerViewColorAugment(jitter_prob=1., gray_prob=0., blur_prob=1.)
    inputs, samples = _batch()
    torch.manual_seed(0)
    out = aug(inputs, samples)
    for t in (3, 4):  # teacher views: the same tensors, unchanged
        assert out[t] is inputs[t] and torch.equal(out[t], inputs[0])
    for v in range(3):
        y = out[v]
        assert torch.equal(y[0], y[4]) and torch.equal(y[1], y[5])  # same group: same draw
        for a, b in ((0, 1), (0, 2), (1, 3), (2, 3)):  # other groups: other draws
            assert (y[a] - y[b]).abs().max() > 1
    for a, b in ((0, 1), (1, 2), (0, 2)):  # other views: other draws
        assert (out[a][0] - out[b][0]).abs().max() > 1
    # group_keys=(): one draw per view for the whole batch
    out = PerViewColorAugment(jitter_prob=1., group_keys=())(inputs, samples)
    assert all(torch.equal(out[v][0], out[v][i]) for v in range(3) for i in range(6))
    assert (out[0][0] - out[1][0]).abs().max() > 1
    # reproducible under a seed
    torch.manual_seed(7)
    first = aug(inputs, samples)
    torch.manual_seed(7)
    again = aug(inputs, samples)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize('kwargs, msg', [
    (dict(brightness=-0.1), 'brightness'),
    (dict(hue=0.7), 'hue'),
    (dict(contrast='strong'), 'contrast'),
    (dict(jitter_prob=1.5), 'jitter_prob'),
    (dict(gray_prob=True), 'gray_prob'),
    (dict(blur_prob=-0.1), 'blur_prob'),
    (dict(sigma=(2.0, 0.1)), 'sigma'),
    (dict(sigma=(0.0, 1.0)), 'sigma'),
    (dict(kernel_size=6), 'kernel_size'),
    (dict(group_keys='source'), 'group_keys'),
    (dict(max_value=0), 'max_value'),
])
def test_bad_config_values(kwargs, msg):
    with pytest.raises((TypeError, ValueError), match=f'PerViewColorAugment: .*{msg}'):
        PerViewColorAugment(**kwargs)


def test_bad_batches():
    aug = PerViewColorAugment()
    inputs, samples = _batch()
    with pytest.raises(KeyError, match='num_student_views'):
        aug(inputs, [DataSample() for _ in samples])
    with pytest.raises(TypeError, match='must be float'):
        aug([x.to(torch.uint8) for x in inputs], samples)
    with pytest.raises(ValueError, match=r'view 0 must be \[B=6, 3, H, W\]'):
        aug([x[:, :1] for x in inputs], samples)


def _packed(student_color='batch', B=4, seed=0):
    """A default_collate batch of B images through GeometricMultiView + PackGeometricViews."""
    rng = np.random.default_rng(seed)
    kwargs = (dict(batch_color=True) if student_color == 'batch' else
              dict(student_pipeline=[dict(type='RandomGaussianBlur', prob=1.)]))
    views = GeometricMultiView(num_global=2, global_size=16, num_local=2, local_size=8,
                               local_scale=(0.1, 0.3), min_overlap=None, seed=seed, **kwargs)
    pack = PackGeometricViews()
    items = [pack(views(dict(img=rng.integers(0, 256, (24, 20, 3), dtype=np.uint8))))
             for _ in range(B)]
    inputs = [torch.stack([it['inputs'][v] for it in items]) for v in range(6)]
    return dict(inputs=inputs, data_samples=[it['data_samples'] for it in items])


def test_data_preprocessor_augments_student_views_only_in_training():
    cfg = dict(type='CoTAPDataPreprocessor', mean=MEAN, std=STD, to_rgb=True,
               batch_augments=[dict(type='PerViewColorAugment')])
    pre = MODELS.build(cfg)
    plain = SelfSupDataPreprocessor(mean=MEAN, std=STD, to_rgb=True)
    data = _packed()
    assert all(s.student_color == 'batch' for s in data['data_samples'])
    ref = plain(dict(data), False)['inputs']
    for training in (False, True):
        torch.manual_seed(0)
        out = pre(dict(data), training)['inputs']
        for t in (4, 5):  # teacher views: exactly SelfSupDataPreprocessor's
            torch.testing.assert_close(out[t], ref[t], rtol=0, atol=0)
        if not training:
            assert all(torch.equal(a, b) for a, b in zip(out, ref))
    # student views = normalise(augment(RGB float)), same seed
    aug = PerViewColorAugment()
    rgb = [x[:, [2, 1, 0]].float() for x in data['inputs']]
    torch.manual_seed(0)
    want = aug(rgb, data['data_samples'])
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    for v in range(4):
        torch.testing.assert_close(out[v], (want[v] - mean) / std)
    assert any(not torch.allclose(out[v], ref[v]) for v in range(4))
    # BGR after conversion: the augmentation still sees RGB
    bgr = CoTAPDataPreprocessor(mean=MEAN[::-1], std=STD[::-1],
                                batch_augments=dict(type='PerViewColorAugment'))
    torch.manual_seed(0)
    out_bgr = bgr(dict(data), True)['inputs']
    for v in range(4):
        torch.testing.assert_close(out_bgr[v].flip(1), out[v], atol=1e-5, rtol=0)


def test_data_preprocessor_refuses_missing_or_double_colour():
    with_aug = CoTAPDataPreprocessor(mean=MEAN, std=STD, to_rgb=True,
                                     batch_augments=dict(type='PerViewColorAugment'))
    without = CoTAPDataPreprocessor(mean=MEAN, std=STD, to_rgb=True)
    with pytest.raises(ValueError, match='has no PerViewColorAugment'):
        without(_packed('batch'), True)
    with pytest.raises(ValueError, match='augments twice'):
        with_aug(_packed('pipeline'), True)
    without(_packed('batch'), False)  # inference: no check, nothing to augment
    without(_packed('pipeline'), True)
    with pytest.raises(ValueError, match='input_channel_order'):
        CoTAPDataPreprocessor(input_channel_order='rbg')
    with pytest.raises(TypeError, match='batch_augments'):
        CoTAPDataPreprocessor(batch_augments='PerViewColorAugment')
    with pytest.raises(ValueError, match='student_pipeline would augment twice'):
        GeometricMultiView(batch_color=True, student_pipeline=[dict(type='RandomGaussianBlur')])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_on_gpu_equals_cpu():
    aug = PerViewColorAugment(jitter_prob=1., blur_prob=1.)
    inputs, samples = _batch()
    torch.manual_seed(3)
    cpu = aug(inputs, samples)
    torch.manual_seed(3)
    gpu = aug([x.to('cuda') for x in inputs], samples)
    for a, b in zip(cpu, gpu):
        assert b.is_cuda
        torch.testing.assert_close(b.cpu(), a, atol=1e-2, rtol=0)


@pytest.mark.parametrize('name', ['cotap_coco.py', 'cotap_coco_nn.py', 'cotap_coco_in1k.py'])
def test_released_dataset_configs_leave_colour_to_the_batch(name):
    """The released-run data configs: no per-image jitter, batch_color=True, and the documented
    PerViewColorAugment = the released values; the per-image option still builds."""
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs/_base_/datasets', name))
    ds = cfg.train_dataloader.dataset
    pipelines = [ds.coco.pipeline, ds.imagenet.pipeline] if 'coco' in ds and 'imagenet' in ds \
        else [ds.pipeline]
    for pipeline in pipelines:
        (views, ) = [t for t in pipeline if t['type'] == 'GeometricMultiView']
        assert views['batch_color'] is True and not views['student_pipeline']
    aug = BATCH_AUGMENTS.build(cfg.batch_color_augment)
    assert repr(aug) == repr(PerViewColorAugment())  # the class defaults are the released values
    assert aug.group_keys == ('source', 'is_neighbor')
    assert [type(TRANSFORMS.build(t)).__name__ for t in cfg.per_image_student_pipeline] == [
        'HueSafeColorJitter', 'RandomGrayscale', 'RandomGaussianBlur']

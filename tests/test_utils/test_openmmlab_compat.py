"""Stock OpenMMLab configs in this environment: mmcv's adjust_hue under NumPy 2, and a stock
``mmpretrain::`` config's dataloader (``_scope_`` in its collate_fn) drawing a batch."""
import math
import os
import os.path as osp

import cv2
import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from PIL import Image

import cotap_mm  # noqa: F401  (installs the shims)
from cotap_mm.utils import openmmlab_compat
from cotap_mm.utils.openmmlab_compat import adjust_hue, resolve_collate_scope

MOCOV3_S = 'mmpretrain::mocov3/mocov3_vit-small-p16_16xb256-amp-coslr-300e_in1k.py'
FACTORS = (-0.5, -0.37, -0.1, -0.0627, -0.001, 0.0, 0.03, 0.1, 0.25, 0.5)


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(9, 13, 3), dtype=np.uint8)


def _shift(factor: float) -> int:
    """NumPy 1's ``np.uint8(factor * 255)``: C's float -> int (toward zero), then mod 256."""
    return math.trunc(factor * 255) % 256


def _reference_cv2(img: np.ndarray, factor: float) -> np.ndarray:
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV_FULL).astype(np.int64)
    hsv[..., 0] = (hsv[..., 0] + _shift(factor)) % 256
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR_FULL)


def _reference_pillow(img: np.ndarray, factor: float) -> np.ndarray:
    hsv = np.array(Image.fromarray(np.ascontiguousarray(img[..., ::-1])).convert('HSV'),
                   dtype=np.int64)
    hsv[..., 0] = (hsv[..., 0] + _shift(factor)) % 256
    rgb = Image.fromarray(hsv.astype(np.uint8), 'HSV').convert('RGB')
    return np.array(rgb)[..., ::-1]


@pytest.mark.parametrize('factor', FACTORS)
def test_adjust_hue_equals_int_arithmetic_in_hsv(factor):
    img = _image()
    np.testing.assert_array_equal(adjust_hue(img, factor, backend='cv2'), _reference_cv2(img, factor))
    np.testing.assert_array_equal(adjust_hue(img, factor, backend='pillow'),
                                  _reference_pillow(img, factor))


def test_mmcv_adjust_hue_is_the_numpy2_safe_one():
    assert openmmlab_compat.numpy_hue_cast_raises() == (int(np.__version__.split('.')[0]) >= 2)
    img = _image(1)
    # what mmpretrain's ColorJitter calls; under NumPy 2 mmcv's own raises OverflowError here
    np.testing.assert_array_equal(mmcv.adjust_hue(img, -0.0627, backend='cv2'),
                                  _reference_cv2(img, -0.0627))
    assert not openmmlab_compat.install_hue_fix()  # already installed by `import cotap_mm`
    for factor in (f for f in FACTORS if f >= 0):  # mmcv's own is right without a negative cast
        for backend in ('cv2', 'pillow'):
            np.testing.assert_array_equal(
                adjust_hue(img, factor, backend=backend),
                adjust_hue.mmcv_original(img, factor, backend=backend))
    with pytest.raises(ValueError, match=r'hue_factor:0.6 is not in \[-0.5, 0.5\]'):
        adjust_hue(img, 0.6)


def test_collate_scope_is_resolved_in_its_registry():
    from mmengine.dataset import default_collate
    cfg = dict(batch_size=2, collate_fn=dict(type='default_collate', _scope_='mmpretrain'))
    out = resolve_collate_scope(cfg)
    assert out['collate_fn'] == dict(type=default_collate) and '_scope_' in cfg['collate_fn']
    assert resolve_collate_scope(dict(collate_fn=dict(type='default_collate'))) == dict(
        collate_fn=dict(type='default_collate'))
    with pytest.raises(KeyError, match="'no_such_collate' .*_scope_='mmpretrain'"):
        resolve_collate_scope(dict(collate_fn=dict(type='no_such_collate', _scope_='mmpretrain')))


def _tiny_imagenet(root: str, classes=('n01440764', 'n01443537'), per_class: int = 3) -> str:
    lines = []
    rng = np.random.default_rng(0)
    for label, wnid in enumerate(classes):
        for i in range(per_class):
            rel = f'{wnid}/{wnid}_{i}.JPEG'
            path = osp.join(root, 'train', rel)
            os.makedirs(osp.dirname(path), exist_ok=True)
            Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(
                path, format='JPEG')
            lines.append(f'{rel} {label}')
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    with open(osp.join(root, 'meta', 'train.txt'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return root


def test_stock_mocov3_config_draws_a_batch(tmp_path):
    child = tmp_path / 'mocov3_child.py'
    child.write_text(f'_base_ = [{MOCOV3_S!r}]\n')
    cfg = Config.fromfile(str(child))
    loader = cfg.train_dataloader
    assert loader.collate_fn.get('_scope_') == 'mmpretrain'  # what broke default_collate
    data_root = _tiny_imagenet(str(tmp_path / 'imagenet'))
    loader.update(batch_size=4, num_workers=0, persistent_workers=False, pin_memory=False)
    loader.dataset.data_root = data_root
    for view in loader.dataset.pipeline[1].transforms:
        for t in view:
            if t['type'] == 'RandomApply':  # always jitter (hue in [-0.1, 0.1], half negative)
                t['prob'] = 1.0
    DefaultScope.get_instance('test_stock_mocov3', scope_name='mmpretrain')
    torch.manual_seed(0)
    np.random.seed(0)
    batch = next(iter(Runner.build_dataloader(loader, seed=0)))
    views = batch['inputs']
    assert len(views) == 2 and all(v.shape == (4, 3, 224, 224) for v in views)
    assert views[0].dtype == torch.uint8 and len(batch['data_samples']) == 4

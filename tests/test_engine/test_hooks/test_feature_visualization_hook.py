import os.path as osp
from types import SimpleNamespace

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope
from PIL import Image

import cotap_mm  # noqa: F401
from cotap_mm.engine.hooks import FeatureVisualizationHook

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def _model(cfg_name: str):
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    return MODELS.build(Config.fromfile(osp.join(REPO, cfg_name)).model)


@pytest.mark.parametrize('cfg_name', [
    'configs/cotap/cotap_vit-tiny-p8_1xb8-demo_synthetic.py',  # extract_feat: 2C map
    'configs/mocov3/mocov3_vit-tiny-p8_1xb16-200it_folder.py',  # backbone patch tokens
])
def test_writes_pictures_every_interval(tmp_path, cfg_name):
    model = _model(cfg_name)
    hook = FeatureVisualizationHook(interval=2, num_images=2, image_size=64)
    runner = SimpleNamespace(model=model, work_dir=str(tmp_path), iter=0,
                             train_loop=SimpleNamespace(max_iters=3), max_iters=3)
    model.train()
    for it in range(3):
        runner.iter = it
        hook.after_train_iter(runner, it)
    assert model.training, 'the hook must restore train mode'
    files = sorted(p.name for p in (tmp_path / 'feature_vis').iterdir())
    # iteration 2 (every 2nd) and iteration 3 (the last)
    assert files == ['iter_2_img0.png', 'iter_2_img1.png', 'iter_3_img0.png', 'iter_3_img1.png']
    pic = np.asarray(Image.open(tmp_path / 'feature_vis' / 'iter_2_img0.png'))
    assert pic.ndim == 3 and pic.shape[2] == 3 and pic.shape[1] >= 3 * 64 - 1
    other = np.asarray(Image.open(tmp_path / 'feature_vis' / 'iter_2_img1.png'))
    assert not np.array_equal(pic, other)


def test_bad_arguments():
    with pytest.raises(ValueError, match='interval'):
        FeatureVisualizationHook(interval=0)

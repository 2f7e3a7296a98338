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
    with pytest.raises(ValueError, match='not both'):
        FeatureVisualizationHook(image_dir='x', from_train_data=True)
    with pytest.raises(ValueError, match='kmeans_k'):
        FeatureVisualizationHook(kmeans_k=(0, ))
    with pytest.raises(FileNotFoundError, match='not a folder'):
        FeatureVisualizationHook(image_dir='/nonexistent/folder')


def _write_photos(folder, n=3):
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        arr = rng.integers(0, 256, size=(40 + 10 * i, 50, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f'photo_{i}.png')
    (folder / 'notes.txt').write_text('not an image')
    return folder


def _cv2_resized(path, size):
    import cv2
    rgb = np.asarray(Image.open(path).convert('RGB'))
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)


def test_draws_a_folder_with_kmeans_maps(tmp_path):
    from cotap_mm.evaluation.visualization import kmeans_label_map
    photos = _write_photos(tmp_path / 'photos')
    hook = FeatureVisualizationHook(interval=1, num_images=2, image_size=32, image_dir=str(photos),
                                    kmeans_k=(3, ))
    expected = _cv2_resized(photos / 'photo_1.png', 32)
    assert hook.images.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(hook.images[1], expected)
    model = _model('configs/cotap/cotap_vit-tiny-p8_1xb8-demo_synthetic.py')
    runner = SimpleNamespace(model=model, work_dir=str(tmp_path), iter=0,
                             train_loop=SimpleNamespace(max_iters=5), max_iters=5)
    folder = hook.write(runner, 'iter_1')
    pic = np.asarray(Image.open(osp.join(folder, 'iter_1_img1.png')).convert('RGB'))
    assert pic.shape == (12 + 32, 4 * 32, 3)  # image | pca | similarity | k-means 3
    from cotap_mm.evaluation.linear_probe import build_model_feature_extractor
    import torch
    feats = build_model_feature_extractor(model)(
        torch.from_numpy(hook.images[1:2]).permute(0, 3, 1, 2).float())[0]
    labels = kmeans_label_map(feats, 3)
    km = pic[12:, 96:][::8, ::8]  # 4 x 4 grid, 8 px per patch
    for a in np.unique(labels):
        assert len({tuple(c) for c in km[labels == a]}) == 1


def test_draws_the_training_images(tmp_path):
    photos = _write_photos(tmp_path / 'photos', n=4)
    from cotap_mm.datasets.coco_unlabeled import UnlabeledImageDataset
    dataset = UnlabeledImageDataset(data_root=str(tmp_path), data_prefix='photos', pipeline=[])
    wrapped = SimpleNamespace(datasets=[SimpleNamespace(), dataset], __len__=lambda: 4)
    hook = FeatureVisualizationHook(num_images=2, image_size=16, from_train_data=True)
    assert hook.images is None
    hook.before_train(SimpleNamespace(train_dataloader=SimpleNamespace(dataset=dataset)))
    assert hook.images.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(hook.images[0], _cv2_resized(photos / 'photo_0.png', 16))
    from cotap_mm.engine.hooks.feature_visualization_hook import dataset_images
    assert [osp.basename(p) for p in dataset_images(wrapped, 3)] == [
        'photo_0.png', 'photo_1.png', 'photo_2.png']
    with pytest.raises(ValueError, match='no image files'):
        dataset_images(SimpleNamespace(), 2)

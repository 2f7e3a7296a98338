"""The SCFS configs (configs/scfs/*) parse, build and carry the official hyper-parameters."""
import glob
import os.path as osp

import pytest
import torch

import cotap_mm  # noqa: F401
from mmengine.config import Config
from mmpretrain.registry import MODELS

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs/scfs/*.py')))


def test_config_names():
    names = [osp.basename(p) for p in CONFIGS]
    assert 'scfs_resnet50_8xb32-200e_in1k.py' in names
    assert 'scfs_resnet18_1xb8-300it_synthetic.py' in names
    assert 'scfs_vit-tiny-p8_1xb8-300it_synthetic.py' in names


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_parses(path):
    cfg = Config.fromfile(path)
    assert cfg.model.type == 'SCFS'
    assert cfg.custom_imports['imports'] == ['cotap_mm']
    hooks = [h['type'] for h in cfg.custom_hooks]
    assert 'EMATeacherHook' in hooks
    views = [t for t in cfg.train_dataloader.dataset.pipeline if t['type'] == 'GeometricMultiView']
    assert len(views) == 1 and views[0]['num_global'] == 2 and views[0]['num_local'] >= 1
    assert len(cfg.model.stage_channels) == 3


def test_resnet50_in1k_official_hyperparameters():
    cfg = Config.fromfile(osp.join(REPO, 'configs/scfs/scfs_resnet50_8xb32-200e_in1k.py'))
    m = cfg.model
    assert m.backbone.type == 'ResNet' and m.backbone.depth == 50
    assert tuple(m.backbone.out_indices) == (1, 2, 3)
    assert tuple(m.stage_channels) == (512, 1024, 2048)
    assert m.head.num_prototypes == 65536 and m.head.in_channels == 2048
    assert m.stage_head.out_channels == 256 and m.stage_head.mid_channels == 256
    assert m.search_cfg == dict(weighting='cosine') and m.search_view == 0
    assert m.search_loss.center_momentum == 1.0 and m.search_loss.loss_weight == 0.5
    assert m.stage_global_loss.loss_weight == 0.5 and m.dino_loss.loss_weight == 1.0
    for loss in (m.dino_loss, m.stage_global_loss, m.search_loss):
        assert (loss.student_temp, loss.warmup_teacher_temp, loss.teacher_temp) == (0.1, 0.04, 0.07)
        assert loss.warmup_iters == 50 * (1281167 // 256)
    views = cfg.train_dataloader.dataset.pipeline[1]
    assert (views.global_size, tuple(views.global_scale)) == (224, (0.25, 1.0))
    assert (views.num_local, views.local_size, tuple(views.local_scale)) == (8, 96, (0.05, 0.25))
    assert cfg.train_dataloader.batch_size * 8 == 256
    assert cfg.optim_wrapper.optimizer.type == 'SGD' and cfg.optim_wrapper.optimizer.lr == 0.1
    assert cfg.optim_wrapper.optimizer.weight_decay == 1e-4
    assert cfg.train_cfg.max_epochs == 200
    ema = [h for h in cfg.custom_hooks if h['type'] == 'EMATeacherHook'][0]
    assert (ema['momentum'], ema['end_momentum']) == (0.996, 1.0)


def test_resnet50_model_builds_with_matching_stage_channels():
    cfg = Config.fromfile(osp.join(REPO, 'configs/scfs/scfs_resnet50_8xb32-200e_in1k.py'))
    model = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [512, 1024, 2048]
    assert [f.shape[-1] for f in feats] == [8, 4, 2]


def test_vit_base_model_config():
    cfg = Config.fromfile(osp.join(REPO, 'configs/_base_/models/scfs_vit.py'))
    m = cfg.model
    assert m.backbone.type == 'CoTAPViT' and tuple(m.backbone.out_indices) == (3, 7, 11)
    assert m.backbone.out_type == 'featmap' and m.dino_feature == 'cls'
    assert tuple(m.stage_channels) == (384, 384, 384) and m.head.in_channels == 384


def test_resnet50_in1k_pipeline_runs():
    import numpy as np
    from mmengine.dataset import Compose
    from mmpretrain.registry import TRANSFORMS
    cfg = Config.fromfile(osp.join(REPO, 'configs/scfs/scfs_resnet50_8xb32-200e_in1k.py'))
    # skip LoadImageFromFile
    pipeline = Compose([TRANSFORMS.build(t) for t in cfg.train_dataloader.dataset.pipeline[1:]])
    img = np.random.default_rng(0).integers(0, 256, (120, 100, 3), dtype=np.uint8)
    out = pipeline(dict(img=img))
    shapes = [tuple(x.shape) for x in out['inputs']]
    assert shapes == [(3, 224, 224)] * 2 + [(3, 96, 96)] * 8 + [(3, 224, 224)] * 2
    assert out['data_samples'].metainfo['num_global_crops'] == 2

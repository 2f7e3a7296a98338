import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config

import cotap_mm  # noqa: F401
import cotap_mm.models.algorithms.cotap  # noqa: F401
import cotap_mm.models.heads.dino_projection_head  # noqa: F401
import cotap_mm.models.losses.dino_cls_loss  # noqa: F401  (registers DINOClsLoss)
from mmpretrain.registry import MODELS

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs/cotap/*.py')))


def test_configs_found():
    names = {osp.basename(p) for p in CONFIGS}
    assert {'cotap_vit-small-p16_4xb28-240k_coco.py', 'cotap_vit-base-p16_8xb16-210k_coco.py',
            'cotap_vit-tiny-p8_1xb8-demo_synthetic.py'} <= names


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_config_parses(path):
    cfg = Config.fromfile(path)
    assert cfg.model.type == 'CoTAP'
    assert any(h.type == 'EMATeacherHook' for h in cfg.custom_hooks)
    assert cfg.train_dataloader.collate_fn.type == 'default_collate'
    assert cfg.model.data_preprocessor.type == 'SelfSupDataPreprocessor'


def test_paper_config_values():
    cfg = Config.fromfile(osp.join(REPO, 'configs/cotap_vits16_coco.py'))
    assert cfg.model.backbone.arch == 'dino-s' and cfg.model.backbone.patch_size == 16
    assert cfg.model.pool_scales == (7, 14) and cfg.model.topk == 5 and cfg.model.num_random == 5
    assert cfg.model.patch_head.num_prototypes == 512 and cfg.model.cls_head.num_prototypes == 4096
    assert cfg.model.neck.num_prototypes == 64 and cfg.model.bank_size == 1024
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.optimizer.lr == 3e-5 and cfg.optim_wrapper.optimizer.weight_decay == 0.024
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys['patch_head'].lr_mult == 10.0
    assert cfg.train_dataloader.batch_size == 28 and cfg.train_cfg.max_iters == 240000
    assert cfg.train_dataloader.dataset.data_root == 'data/coco'
    assert cfg.train_dataloader.dataset.data_prefix == 'train2017'
    assert cfg.load_from == 'checkpoints/dino_vits16_cotap.pth'
    base = Config.fromfile(osp.join(REPO, 'configs/cotap/cotap_vit-base-p16_8xb16-210k_coco.py'))
    assert base.model.backbone.arch == 'dino-b' and base.train_dataloader.batch_size == 16
    assert base.train_cfg.max_iters == 210000


def test_tiny_model_builds():
    cfg = Config.fromfile(osp.join(REPO, 'configs/cotap/cotap_vit-tiny-p8_1xb8-demo_synthetic.py'))
    model = MODELS.build(cfg.model)
    assert model.backbone.embed_dims == 96 and model.neck.num_prototypes == 16
    assert model.extract_feat(torch.zeros(1, 3, 64, 64)).shape == (1, 192, 8, 8)
    assert cfg.find_unused_parameters is True

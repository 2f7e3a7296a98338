"""ImageNet linear classification configs (configs/benchmarks/classification/): they parse with the
released protocol, and a tiny run on a generated ImageNet-layout folder trains the head only, on the
plain CLS token (C) or on the filter's 2C CLS token, which equals CoTAP's own computation."""
import glob
import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from PIL import Image

from cotap_mm.evaluation.knn_classify import build_cls_feature_extractor
from cotap_test_helpers.cotap_checkpoint import build_tiny_cotap, save_cotap_checkpoint
from cotap_test_helpers.tiny_runs import REPO_ROOT

CLS_DIR = osp.join(REPO_ROOT, 'configs/benchmarks/classification')
C_CFG = osp.join(CLS_DIR, 'linear_cotap-vit-s16_1xb256-5005it_in1k.py')
C2_CFG = osp.join(CLS_DIR, 'linear_cotap-filtered-vit-s16_1xb256-5005it_in1k.py')
TINY = dict(embed_dims=96, num_layers=4, num_heads=3, feedforward_channels=384)
WNIDS = ('n01440764', 'n01443537', 'n01484850')


def write_imagenet(root: str, per_class: int = 4, per_val: int = 2, size: int = 64) -> str:
    """data/imagenet/{train,val}/<wnid>/*.JPEG with random images."""
    rng = np.random.default_rng(0)
    for split, n in (('train', per_class), ('val', per_val)):
        for c, wnid in enumerate(WNIDS):
            os.makedirs(osp.join(root, split, wnid), exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size, size + 8 * i, 3), dtype=np.uint8)
                arr[..., c] = 255  # a class-coloured channel
                Image.fromarray(arr).save(osp.join(root, split, wnid, f'{wnid}_{i}.JPEG'))
    return root


def test_configs_parse_with_the_released_protocol():
    paths = sorted(glob.glob(osp.join(CLS_DIR, '*.py')))
    assert len(paths) == 3
    for path in paths:
        cfg = Config.fromfile(path)
        assert cfg.model.type == 'ImageClassifier' and cfg.model.head.num_classes == 1000
        assert cfg.train_cfg.max_iters == 5005 and cfg.train_dataloader.batch_size == 256
        assert cfg.optim_wrapper.optimizer == dict(type='Adam', lr=1e-3, betas=(0.9, 0.999),
                                                   weight_decay=0.0)
        assert cfg.val_dataloader.dataset.split == 'val'
        assert [t['type'] for t in cfg.test_pipeline][1:3] == ['ResizeEdge', 'CenterCrop']
    c, c2 = Config.fromfile(C_CFG), Config.fromfile(C2_CFG)
    assert c.model.backbone.out_type == 'cls_token' and c.model.backbone.frozen_stages == 12
    assert c.model.head.in_channels == 384 and c2.model.head.in_channels == 768
    assert c2.model.backbone.type == 'CoTAPFilteredCLSViT' and c2.model.backbone.frozen
    assert c2.model.backbone.init_cfg.prefix == ''


def _tiny_cfg(path: str, ckpt: str, data_root: str, work_dir: str) -> Config:
    cfg = Config.fromfile(path)
    cfg.merge_from_dict({
        'work_dir': work_dir,
        'model.backbone.patch_size': 8,
        'model.backbone.init_cfg.checkpoint': ckpt,
        'model.head.num_classes': 3, 'model.data_preprocessor.num_classes': 3,
        'train_dataloader.dataset.data_root': data_root,
        'val_dataloader.dataset.data_root': data_root,
        'test_dataloader.dataset.data_root': data_root,
        'train_dataloader.batch_size': 4, 'val_dataloader.batch_size': 4,
        'train_dataloader.num_workers': 0, 'val_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False, 'val_dataloader.persistent_workers': False,
        'train_cfg.max_iters': 2, 'train_cfg.val_interval': 2,
        'default_hooks.checkpoint.interval': 2, 'default_hooks.logger.interval': 1,
        'val_evaluator.topk': (1, ),
        # a 3-class ImageNet: its classes (the real one has the 1000 of ImageNet's metainfo)
        'train_dataloader.dataset.metainfo': dict(classes=WNIDS),
        'val_dataloader.dataset.metainfo': dict(classes=WNIDS),
    })
    cfg.model.backbone.arch = dict(TINY)  # (a dict replacing the base's 'dino-s' string)
    if 'Filtered' in cfg.model.backbone.type:
        cfg.model.backbone.num_prototypes = 16
        cfg.model.head.in_channels = 192
    else:
        cfg.model.head.in_channels = 96
        cfg.model.backbone.frozen_stages = TINY['num_layers']  # every block, as 12 for ViT-S/B
    return cfg


def _run(cfg: Config):
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


@pytest.mark.parametrize('features', ['C', '2C'])
def test_tiny_run_trains_only_the_head(features, tmp_path, one_thread):
    data = write_imagenet(str(tmp_path / 'data' / 'imagenet'))
    cotap = build_tiny_cotap(TINY, img_size=224, num_prototypes=16)
    ckpt = save_cotap_checkpoint(cotap, str(tmp_path / 'cotap.pth'))
    cfg = _tiny_cfg(C_CFG if features == 'C' else C2_CFG, ckpt, data, str(tmp_path / 'work'))
    runner = _run(cfg)
    model = runner.model
    # the backbone (and filter) is the checkpoint's, untouched by training
    for name, t in model.backbone.state_dict().items():
        src = cotap.state_dict()[name if features == '2C' else f'backbone.{name}']
        assert torch.equal(t, src), name
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert runner.message_hub.get_scalar('val/accuracy/top1') is not None
    head0 = torch.load(osp.join(cfg.work_dir, 'iter_2.pth'), weights_only=True)['state_dict']
    assert head0['head.fc.weight'].shape == (3, 96 if features == 'C' else 192)
    # the features the head reads are CoTAP's CLS (C: after the final norm; 2C: the filter's)
    x = torch.rand(2, 3, 224, 224) * 255
    init_default_scope('mmpretrain')
    with torch.no_grad():
        got = model.backbone(model.data_preprocessor({'inputs': list(x.flip(1).byte()),
                                                      'data_samples': None})['inputs'])[0]
    ref = build_cls_feature_extractor(cotap, features)(x.byte().float())
    assert torch.allclose(got, ref, atol=1e-4)

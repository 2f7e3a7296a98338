"""mmdet benchmark configs (configs/benchmarks/mmdet/): parsing, weight loading, layer decay, and
tiny end-to-end COCO Mask R-CNN runs through tools/benchmarks/mmdet/{train,test}.sh and tools/train.py."""
import glob
import json
import os
import os.path as osp
import re
import subprocess
from typing import Dict, List

import pytest
import torch
from cotap_test_helpers.det_data import TINY_COCO_CLASSES, write_tiny_coco
from cotap_test_helpers.tiny_runs import REPO_ROOT, free_port, run, run_env
from mmengine.config import Config, DictAction

CFG_DIR = osp.join(REPO_ROOT, 'configs', 'benchmarks', 'mmdet')
VIT_S_1X = osp.join(CFG_DIR, 'mask-rcnn_vit-small-p16-simplefpn_8xb2-lsj-1x_coco.py')
R50_1X = osp.join(CFG_DIR, 'mask-rcnn_r50-syncbn_fpn_8xb2-1x_coco.py')
TRAIN_SH = osp.join(REPO_ROOT, 'tools', 'benchmarks', 'mmdet', 'train.sh')
TEST_SH = osp.join(REPO_ROOT, 'tools', 'benchmarks', 'mmdet', 'test.sh')

TINY_VIT_ARCH = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
SIZE = '(128,128)'
CLASSES = '(' + ','.join(TINY_COCO_CLASSES) + ')'


def _heads_options(width: int = 32) -> Dict[str, str]:
    w = str(width)
    return {
        'model.neck.out_channels': w,
        'model.rpn_head.in_channels': w,
        'model.rpn_head.feat_channels': w,
        'model.roi_head.bbox_roi_extractor.out_channels': w,
        'model.roi_head.bbox_head.in_channels': w,
        'model.roi_head.bbox_head.conv_out_channels': w,
        'model.roi_head.bbox_head.fc_out_channels': '64',
        'model.roi_head.bbox_head.num_classes': str(len(TINY_COCO_CLASSES)),
        'model.roi_head.mask_roi_extractor.out_channels': w,
        'model.roi_head.mask_head.in_channels': w,
        'model.roi_head.mask_head.conv_out_channels': w,
        'model.roi_head.mask_head.num_classes': str(len(TINY_COCO_CLASSES)),
        'model.train_cfg.rpn_proposal.nms_pre': '200',
        'model.train_cfg.rpn_proposal.max_per_img': '50',
        'model.train_cfg.rcnn.sampler.num': '32',
        'model.test_cfg.rpn.nms_pre': '200',
        'model.test_cfg.rpn.max_per_img': '50',
        'model.test_cfg.rcnn.max_per_img': '20',
    }


def _loader_options(train_resize: Dict[str, str], test_resize: Dict[str, str]) -> Dict[str, str]:
    opts = {
        'train_dataloader.batch_size': '1',
        'train_cfg.max_epochs': '1',  # 2 images x batch 1 = 2 iterations, then CocoMetric
        'default_hooks.logger.interval': '1',
    }
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts[f'{loader}.num_workers'] = '0'
        opts[f'{loader}.persistent_workers'] = 'False'
        opts[f'{loader}.dataset.metainfo.classes'] = CLASSES
    opts.update({f'train_dataloader.dataset.pipeline.{k}': v for k, v in train_resize.items()})
    for loader in ('val_dataloader', 'test_dataloader'):
        opts.update({f'{loader}.dataset.pipeline.{k}': v for k, v in test_resize.items()})
    return opts


def vit_tiny_options() -> Dict[str, str]:
    """Shrink the ViT-S/16 LSJ config: 2-block width-32 ViT, 128 px LSJ, 32-channel heads."""
    opts = {f'model.backbone.arch.{k}': str(v) for k, v in TINY_VIT_ARCH.items()}
    opts.update({
        'model.backbone.out_indices': '[1]',
        'model.neck.in_channels': '32',
        'model.data_preprocessor.pad_size_divisor': '128',  # = the image size, as in the config
        'optim_wrapper.type': 'OptimWrapper',  # AmpOptimWrapper needs a GPU
    })
    opts.update(_heads_options())
    # train: [Load, LoadAnn, RandomResize, RandomCrop, FilterAnn, Flip, Pack]; test: [Load, Resize, ..]
    opts.update(_loader_options(
        {'2.scale': SIZE, '2.ratio_range': '(0.8,1.2)', '3.crop_size': SIZE}, {'1.scale': SIZE}))
    return opts


def r18_tiny_options() -> Dict[str, str]:
    """Shrink the R50-FPN config: ResNet-18 (same mmdet ResNet / FPN code path), 128 px images."""
    opts = {
        'model.backbone.depth': '18',
        'model.neck.in_channels': '[64,128,256,512]',
    }
    opts.update(_heads_options())
    # train: [Load, LoadAnn, Resize, Flip, Pack]; test: [Load, Resize, LoadAnn, Pack]
    opts.update(_loader_options({'2.scale': '(160,128)'}, {'1.scale': '(160,128)'}))
    return opts


def as_cli(opts: Dict[str, str]) -> List[str]:
    return ['--cfg-options'] + [f'{k}={v}' for k, v in opts.items()]


def load_shrunk(path: str, opts: Dict[str, str]) -> Config:
    """The config as tools/train.py sees it with these --cfg-options (same DictAction parsing)."""
    cfg = Config.fromfile(path)
    cfg.merge_from_dict({k: DictAction._parse_iterable(v) for k, v in opts.items()})
    return cfg


def build_detector(cfg: Config) -> torch.nn.Module:
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        import mmdet.models  # noqa: F401
        return MODELS.build(cfg.model)


# --------------------------------------------------------------------------------------------
def test_every_config_parses():
    paths = sorted(glob.glob(osp.join(CFG_DIR, '**', '*.py'), recursive=True))
    names = {osp.basename(p) for p in paths}
    assert {osp.basename(VIT_S_1X), osp.basename(R50_1X),
            'mask-rcnn_vit-base-p16-simplefpn_8xb2-lsj-3x_coco.py',
            'mask-rcnn_r50-syncbn_fpn_8xb2-ms-poly-3x_coco.py'} <= names
    for path in paths:
        cfg = Config.fromfile(path)
        if '_base_' in path:
            continue
        assert cfg.default_scope == 'mmdet', path
        assert cfg.custom_imports == dict(imports=['cotap_mm'], allow_failed_imports=False), path
        init = cfg.model.backbone.init_cfg
        assert init.type == 'Pretrained' and init.prefix == 'backbone.', path
        assert cfg.default_hooks.plain_checkpoint.type == 'mmpretrain.PlainCheckpointHook', path
        assert cfg.val_evaluator.type == 'CocoMetric'
        assert set(cfg.val_evaluator.metric) == {'bbox', 'segm'}
        if 'vit' in osp.basename(path):
            bb = cfg.model.backbone
            assert bb.type == 'mmpretrain.CoTAPViT' and bb.out_type == 'featmap'
            assert tuple(bb.out_indices) == (11, ) and bb.patch_size == 16
            assert cfg.model.neck.type == 'SimpleFPN'
            assert cfg.model.neck.in_channels == bb.arch.embed_dims
            assert cfg.model.neck.num_outs == len(cfg.model.rpn_head.anchor_generator.strides)
            # every batch padded to the LSJ size: a fixed patch grid for the position embedding
            size = cfg.model.data_preprocessor.pad_size_divisor
            assert size % bb.patch_size == 0
            assert cfg.train_dataloader.dataset.pipeline[3].crop_size == (size, size)
            assert cfg.test_dataloader.dataset.pipeline[1].scale == (size, size)
            assert 'Pad' not in [t.type for t in cfg.test_dataloader.dataset.pipeline]
            assert cfg.optim_wrapper.optimizer.type == 'AdamW'
        else:
            assert cfg.model.backbone.type == 'ResNet' and cfg.model.backbone.depth == 50
            assert cfg.model.backbone.norm_cfg.type == 'SyncBN'
            assert cfg.model.neck.norm_cfg.type == 'SyncBN'
            assert cfg.model.backbone.frozen_stages == -1 and not cfg.model.backbone.norm_eval
        epochs = cfg.train_cfg.max_epochs
        loader = cfg.train_dataloader.dataset
        repeat = loader.times if loader.type == 'RepeatDataset' else 1
        sched = re.search(r'-(\d)x_', osp.basename(path)).group(1)
        assert epochs * repeat == 12 * int(sched), path


def test_vit_layer_decay_matches_vitdet():
    """The config's custom_keys give ViTDet's get_vit_lr_decay_rate lr scales (0.7 ** (13 - depth)),
    no weight decay on norms / pos_embed / cls_token, and plain lr / wd elsewhere."""
    from mmengine.optim import build_optim_wrapper
    opts = {f'model.backbone.arch.{k}': str(v) for k, v in
            dict(embed_dims=32, num_heads=2, feedforward_channels=64).items()}  # 12 blocks kept
    opts.update({'model.neck.in_channels': '32', 'optim_wrapper.type': 'OptimWrapper'})
    opts.update(_heads_options())
    cfg = load_shrunk(VIT_S_1X, opts)
    model = build_detector(cfg)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    base_lr, base_wd, rate = 1e-4, 0.1, 0.7
    by_param = {}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            by_param[id(p)] = group
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm)
    norm_params = {id(p) for m in model.modules() if isinstance(m, norms)
                   for p in m.parameters(recurse=False)}
    checked = 0
    for name, p in model.named_parameters():
        depth = 13  # ViTDet: everything that is not patch/pos embedding or a block: scale 1
        if name.startswith('backbone.'):
            if name.split('.')[1] in ('patch_embed', 'pos_embed', 'cls_token'):
                depth = 0
            m = re.match(r'backbone\.layers\.(\d+)\.', name)
            if m:
                depth = int(m.group(1)) + 1
        no_wd = id(p) in norm_params or name in ('backbone.pos_embed', 'backbone.cls_token')
        group = by_param[id(p)]
        assert group['lr'] == pytest.approx(base_lr * rate**(13 - depth)), name
        assert group['weight_decay'] == pytest.approx(0. if no_wd else base_wd), name
        checked += 1
    assert checked == len(list(model.parameters()))
    assert by_param[id(model.backbone.layers[11].attn.qkv.weight)]['lr'] == pytest.approx(
        base_lr * rate)
    assert by_param[id(model.backbone.layers[11].ln1.weight)]['weight_decay'] == 0
    assert by_param[id(model.backbone.layers[0].ffn.layers[0][0].bias)]['weight_decay'] == base_wd


def _check_pretrained_arrives(tmp_path, cfg_path: str, opts: Dict[str, str]) -> None:
    cfg = load_shrunk(cfg_path, opts)
    model = build_detector(cfg)
    torch.manual_seed(1)
    backbone_sd = {k: torch.randn_like(v) if v.is_floating_point() else v.clone()
                   for k, v in model.backbone.state_dict().items()}
    neck_sd = model.neck.state_dict()
    state = {f'backbone.{k}': v for k, v in backbone_sd.items()}
    # keys that must be ignored: a teacher copy, a neck and a head of the pre-training model
    state.update({f'teacher.backbone.{k}': v + 7 if v.is_floating_point() else v
                  for k, v in backbone_sd.items()})
    state.update({f'neck.{k}': torch.full_like(v, 3.) if v.is_floating_point() else v
                  for k, v in neck_sd.items()})
    state['head.fc.weight'] = torch.ones(3, 3)
    ckpt = str(tmp_path / 'pretrain.pth')
    torch.save({'state_dict': state, 'meta': {'note': 'test'}}, ckpt)

    cfg.model.backbone.init_cfg.checkpoint = ckpt
    model = build_detector(cfg)
    model.init_weights()
    loaded = model.backbone.state_dict()
    assert set(loaded) == set(backbone_sd)
    for k, v in backbone_sd.items():
        torch.testing.assert_close(loaded[k], v, rtol=0, atol=0, msg=k)
    for k, v in model.neck.state_dict().items():
        if v.is_floating_point() and v.numel() > 1:
            assert not torch.all(v == 3.), f'neck.{k} was loaded from the pre-training checkpoint'


def test_vit_pretrained_weights_arrive(tmp_path):
    _check_pretrained_arrives(tmp_path, VIT_S_1X, vit_tiny_options())


def test_r50_pretrained_weights_arrive(tmp_path):
    _check_pretrained_arrives(tmp_path, R50_1X, r18_tiny_options())


# --------------------------------------------------------------------------------------------
def _tiny_vit_pretrain(path: str) -> None:
    from cotap_mm.models.backbones import CoTAPViT
    torch.manual_seed(0)
    vit = CoTAPViT(arch=TINY_VIT_ARCH, img_size=224, patch_size=16)
    state = {f'backbone.{k}': v for k, v in vit.state_dict().items()}
    state['teacher.backbone.pos_embed'] = torch.zeros(1)  # ignored (prefix 'backbone.')
    torch.save({'state_dict': state}, path)


def _metrics_in_log(work_dir: str) -> Dict[str, float]:
    logs = glob.glob(osp.join(work_dir, '*', '*.log'))
    assert logs, f'no log under {work_dir}'
    text = open(sorted(logs)[-1]).read()
    found = dict(re.findall(r'coco/(bbox_mAP|segm_mAP|bbox_mAP_l): (-?[\d.]+)', text))
    metrics = {k: float(v) for k, v in found.items()}
    assert set(metrics) == {'bbox_mAP', 'segm_mAP', 'bbox_mAP_l'}, text[-3000:]
    # the val annotations were read with the configured classes: AP is -1 only where COCO finds no
    # ground truth, i.e. for large objects (the shapes are 24-40 px)
    assert metrics.pop('bbox_mAP_l') == -1
    assert 0 <= metrics['bbox_mAP'] <= 1 and 0 <= metrics['segm_mAP'] <= 1
    return metrics


def test_vit_mask_rcnn_end_to_end(tmp_path):
    """ViT-S LSJ config (shrunk) trained 2 iterations with train.sh (torchrun, 1 process) from a
    `backbone.*` checkpoint, validated with CocoMetric, then evaluated again with test.sh."""
    write_tiny_coco(str(tmp_path))
    pretrain = str(tmp_path / 'vit_pretrain.pth')
    _tiny_vit_pretrain(pretrain)
    work_dir = str(tmp_path / 'work_vit')
    env = run_env({'PORT': str(free_port())})
    proc = run(['bash', TRAIN_SH, VIT_S_1X, '1', pretrain, '--work-dir', work_dir] +
               as_cli(vit_tiny_options()), env=env, cwd=str(tmp_path), timeout=240)
    assert f'load backbone. in model from: {pretrain}' in proc.stdout
    metrics = _metrics_in_log(work_dir)
    ckpt = osp.join(work_dir, 'epoch_1.pth')
    assert osp.isfile(ckpt)

    out = str(tmp_path / 'metrics.json')
    env = run_env({'PORT': str(free_port())})
    run(['bash', TEST_SH, VIT_S_1X, ckpt, '1', '--work-dir', str(tmp_path / 'work_test'),
         '--out', out] + as_cli(vit_tiny_options()), env=env, cwd=str(tmp_path), timeout=240)
    with open(out) as f:
        test_metrics = json.load(f)
    assert test_metrics['coco/bbox_mAP_l'] == -1
    for key in ('bbox_mAP', 'segm_mAP'):
        # same weights, same val images -> same AP as the validation after training
        assert test_metrics[f'coco/{key}'] == pytest.approx(metrics[key], abs=1e-3)


def test_r50_mask_rcnn_end_to_end(tmp_path):
    """R50-FPN SyncBN config (shrunk to depth 18) through tools/train.py, non-distributed (SyncBN is
    reverted to BN by the runner), from a `backbone.*` checkpoint, validated with CocoMetric."""
    write_tiny_coco(str(tmp_path))
    opts = r18_tiny_options()
    model = build_detector(load_shrunk(R50_1X, opts))
    pretrain = str(tmp_path / 'r18_pretrain.pth')
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in model.backbone.state_dict().items()}},
               pretrain)
    opts['model.backbone.init_cfg.checkpoint'] = pretrain
    work_dir = str(tmp_path / 'work_r18')
    proc = run([run_env()['PYTHON'], osp.join(REPO_ROOT, 'tools', 'train.py'), R50_1X,
                '--work-dir', work_dir] + as_cli(opts), cwd=str(tmp_path), timeout=240)
    assert f'load backbone. in model from: {pretrain}' in proc.stdout
    _metrics_in_log(work_dir)


def test_train_sh_refuses_missing_pretrain(tmp_path):
    proc = subprocess.run(
        ['bash', TRAIN_SH, VIT_S_1X, '1', str(tmp_path / 'missing.pth')], env=run_env(),
        cwd=str(tmp_path), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and 'does not exist' in proc.stderr
    assert not os.listdir(tmp_path)

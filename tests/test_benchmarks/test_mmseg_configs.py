"""Every config under configs/benchmarks/mmseg/ parses and has the protocol's structure."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config

from cotap_test_helpers.tiny_runs import REPO_ROOT

CFG_DIR = osp.join(REPO_ROOT, 'configs', 'benchmarks', 'mmseg')
CONFIGS = sorted(glob.glob(osp.join(CFG_DIR, '*.py')))
EMBED = {'dino-s': 384, 'dino-b': 768}
NUM_CLASSES = {'ade20k': 150, 'voc12aug': 21, 'coco-stuff27': 27, 'coco-stuff171': 171,
               'cityscapes': 19}


def _cfg(path):
    return Config.fromfile(path)


def test_config_set_is_complete():
    names = {osp.basename(p) for p in CONFIGS}
    for part in ('upernet_cotap-vit-s16', 'upernet_cotap-vit-b16', 'linear_cotap-vit-s16_1xb128-782it_ade20k',
                 'linear_cotap-vit-s16_1xb128-782it_voc12aug', 'coco-stuff27', 'coco-stuff171',
                 'cityscapes', 'depth_cotap-vit-s16'):
        assert any(part in n for n in names), part


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.basename(p))
def test_config_parses_and_loads_our_checkpoint(path):
    cfg = _cfg(path)
    assert cfg.default_scope == 'mmseg'  # built on mmseg's _base_/default_runtime.py
    assert 'cotap_mm' in cfg.custom_imports['imports']
    bb = cfg.model.backbone
    name = osp.basename(path)
    filtered = name.startswith('linear_cotap-filtered-')
    if filtered:  # paper protocol: ViT + object-aware filter, 2C-dim features
        assert bb.type == 'mmpretrain.CoTAPFilteredViT' and bb.frozen
        assert bb.init_cfg == dict(type='Pretrained', checkpoint=bb.init_cfg.checkpoint, prefix='')
    else:
        assert bb.type == 'mmpretrain.CoTAPViT' and bb.out_type == 'featmap'
        assert bb.init_cfg == dict(type='Pretrained', checkpoint=bb.init_cfg.checkpoint,
                                   prefix='backbone.')
    assert bb.patch_size == (8 if 'vit-b8' in path else 16)
    C = EMBED[bb.arch] * (2 if filtered else 1)
    assert bb.arch == ('dino-s' if 'vit-s16' in path else 'dino-b')
    head = cfg.model.decode_head
    if name.startswith('linear_'):
        if not filtered:
            assert bb.frozen_stages == 12 and bb.final_norm and bb.out_indices == -1
        assert head.type == 'FCNHead' and head.num_convs == 0 and head.kernel_size == 1
        assert not head.concat_input and head.dropout_ratio == 0 and head.in_channels == C == head.channels
        assert cfg.optim_wrapper.optimizer.type == 'Adam' and cfg.param_scheduler == []
        data = next(k for k in NUM_CLASSES if f'_{k}-' in name)
        assert head.num_classes == NUM_CLASSES[data]
        assert cfg.train_cfg.max_iters * cfg.train_dataloader.batch_size >= 100_000  # 100k samples
        lr = 1e-3 if data == 'cityscapes' else 3e-3
        assert cfg.optim_wrapper.optimizer.lr == lr
    elif name.startswith('upernet_'):
        assert tuple(bb.out_indices) == (3, 5, 7, 11) and bb.img_size == 512
        assert cfg.model.neck.type == 'Feature2Pyramid' and cfg.model.neck.embed_dim == C
        assert head.type == 'UPerHead' and head.in_channels == [C] * 4 and head.num_classes == 150
        assert cfg.optim_wrapper.constructor == 'mmpretrain.ViTLayerDecayOptimWrapperConstructor'
        assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.65
        assert cfg.optim_wrapper.optimizer.type == 'AdamW'
        assert cfg.train_cfg.max_iters == 160000 and cfg.train_dataloader.batch_size == 2
    elif name.startswith('depth_'):
        assert cfg.model.type == 'DepthEstimator' and head.type == 'VPDDepthHead'
        assert head.in_channels == [C] * 4 and head.feature_dim == 8 * head.embed_dim
        assert cfg.train_dataloader.dataset.type == 'NYUDataset'
        assert cfg.val_evaluator.type == 'DepthMetric'
        assert cfg.model.data_preprocessor.seg_pad_val == 0
        # albumentations is not part of the stack: the pipeline must not need it
        assert all(t['type'] != 'Albu' for t in cfg.train_dataloader.dataset.pipeline)
    else:
        pytest.fail(f'unexpected config name {name}')


def test_voc_probe_uses_trainaug_once():
    cfg = _cfg(osp.join(CFG_DIR, 'linear_cotap-vit-s16_1xb128-782it_voc12aug-336x336.py'))
    ds = cfg.train_dataloader.dataset
    assert ds.type == 'PascalVOCDataset' and ds.ann_file.endswith('aug.txt')
    assert ds.data_prefix.seg_map_path == 'SegmentationClassAug'


def test_coco_stuff27_uses_curated_lists():
    cfg = _cfg(osp.join(CFG_DIR, 'linear_cotap-vit-s16_1xb256-391it_coco-stuff27-336x336.py'))
    assert cfg.train_dataloader.dataset.type == 'COCOStuff27Dataset'
    assert cfg.train_dataloader.dataset.ann_file.endswith('Coco164kFull_Stuff_Coarse.txt')
    assert cfg.val_dataloader.dataset.ann_file.endswith('Coco164kFull_Stuff_Coarse_7.txt')


def test_real_size_linear_model_builds_and_is_frozen():
    """The full-size ViT-S/16 probe model builds (no checkpoint) with every backbone weight frozen."""
    from mmengine.registry import init_default_scope
    import cotap_mm  # noqa: F401
    from mmseg.registry import MODELS
    import torch
    cfg = _cfg(osp.join(CFG_DIR, 'linear_cotap-vit-s16_1xb128-782it_voc12aug-336x336.py'))
    cfg.model.backbone.init_cfg = None
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ['decode_head.conv_seg.weight', 'decode_head.conv_seg.bias']
    assert model.decode_head.conv_seg.weight.shape == (21, 384, 1, 1)
    model.eval()
    with torch.no_grad():
        feats = model.extract_feat(torch.zeros(1, 3, 64, 96))
    assert len(feats) == 1 and feats[0].shape == (1, 384, 4, 6)

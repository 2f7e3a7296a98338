"""The paper-protocol linear probes (configs/benchmarks/mmseg/linear_cotap-filtered-*): structure, and a
shrunk 2-iteration run through tools/train.py on the tiny on-disk COCO-Stuff layout, loading a tiny real
CoTAP training checkpoint through mmpretrain.CoTAPFilteredViT."""
import glob
import importlib.util
import json
import math
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from cotap_test_helpers.cotap_checkpoint import build_tiny_cotap, save_cotap_checkpoint
from cotap_test_helpers.seg_data import TINY_ARCH, shrink_seg_config, write_coco_stuff
from cotap_test_helpers.tiny_runs import REPO_ROOT

CFG_DIR = osp.join(REPO_ROOT, 'configs', 'benchmarks', 'mmseg')
FILTERED = {
    'linear_cotap-filtered-vit-s16_1xb256-391it_coco-stuff27-336x336.py':
    'linear_cotap-vit-s16_1xb256-391it_coco-stuff27-336x336.py',
    'linear_cotap-filtered-vit-s16_1xb128-782it_voc12aug-336x336.py':
    'linear_cotap-vit-s16_1xb128-782it_voc12aug-336x336.py',
}


@pytest.mark.parametrize('name', sorted(FILTERED))
def test_filtered_config_differs_from_plain_probe_only_in_features(name):
    cfg = Config.fromfile(osp.join(CFG_DIR, name)).to_dict()
    plain = Config.fromfile(osp.join(CFG_DIR, FILTERED[name])).to_dict()
    bb = cfg['model'].pop('backbone')
    plain['model'].pop('backbone')
    assert bb == dict(type='mmpretrain.CoTAPFilteredViT', arch='dino-s', img_size=224, patch_size=16,
                      num_prototypes=64, kernel_size=3, frozen=True,
                      init_cfg=dict(type='Pretrained', checkpoint='pretrain/cotap_vit-s16.pth',
                                    prefix=''))
    head = cfg['model']['decode_head']
    assert head['in_channels'] == head['channels'] == 768  # 2C of ViT-S
    assert plain['model']['decode_head']['in_channels'] == 384
    for d in (head, plain['model']['decode_head']):
        d.pop('in_channels'), d.pop('channels')
    cfg.pop('filename', None), plain.pop('filename', None)
    assert cfg == plain  # data, head type, optimiser, schedule, hooks: the plain probe's


def test_real_size_filtered_probe_builds_frozen():
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    name = 'linear_cotap-filtered-vit-s16_1xb128-782it_voc12aug-336x336.py'
    cfg = Config.fromfile(osp.join(CFG_DIR, name))
    cfg.model.backbone.init_cfg = None
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ['decode_head.conv_seg.weight', 'decode_head.conv_seg.bias']
    assert model.backbone.out_channels == 768 and model.backbone.neck.num_prototypes == 64
    assert model.decode_head.conv_seg.weight.shape == (21, 768, 1, 1)


def _scalars(work_dir):
    files = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    assert len(files) == 1, files
    with open(files[0]) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_filtered_coco_stuff27_probe_runs_frozen(tmp_path):
    root = str(tmp_path)
    write_coco_stuff(osp.join(root, 'coco'))
    # a tiny CoTAP training checkpoint with the shrunk probe's ViT (seg_data.TINY_ARCH, patch 16)
    cotap = build_tiny_cotap(TINY_ARCH, img_size=64, patch_size=16, num_prototypes=4)
    pretrain = save_cotap_checkpoint(cotap, osp.join(root, 'cotap.pth'))
    src = torch.load(pretrain, weights_only=True)['state_dict']

    name = 'linear_cotap-filtered-vit-s16_1xb256-391it_coco-stuff27-336x336.py'
    cfg = Config.fromfile(osp.join(CFG_DIR, name))
    work_dir = osp.join(root, 'work')
    cfg = shrink_seg_config(cfg, osp.join(root, 'coco'), pretrain, work_dir)
    cfg.model.backbone.num_prototypes = 4
    C2 = 2 * TINY_ARCH['embed_dims']
    cfg.model.decode_head.in_channels = cfg.model.decode_head.channels = C2
    path = osp.join(root, 'cfg.py')
    cfg.dump(path)

    spec = importlib.util.spec_from_file_location('cotap_tools_train_filtered',
                                                  osp.join(REPO_ROOT, 'tools', 'train.py'))
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    train.main([path])

    rows = _scalars(work_dir)
    losses = [r['loss'] for r in rows if 'loss' in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    ev = [r for r in rows if 'mIoU' in r]
    assert len(ev) == 1 and 0 <= ev[0]['mIoU'] <= 100
    state = torch.load(osp.join(work_dir, 'iter_2.pth'), map_location='cpu',
                       weights_only=True)['state_dict']
    # the student branch (prefix '') arrived in both parts and stayed unchanged through training
    keys = [k for k in state if k.startswith('backbone.')]
    assert {k.split('.')[1] for k in keys} == {'backbone', 'neck'}
    assert len(keys) == len(cotap.backbone.state_dict()) + len(cotap.neck.state_dict())
    for k in keys:
        assert torch.equal(state[k], src[k[len('backbone.'):]]), k
    assert state['backbone.neck.prototypes_initialized'].item()
    # the probe itself trained: a 1x1 conv over the 2C-dim features
    w = state['decode_head.conv_seg.weight']
    assert w.shape == (27, C2, 1, 1)
    # mmseg initialises conv_seg's bias to 0 (Normal(std=0.01), bias 0): two Adam steps moved it
    assert state['decode_head.conv_seg.bias'].abs().min() > 0

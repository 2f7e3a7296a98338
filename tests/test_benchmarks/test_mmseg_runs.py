"""End-to-end runs of the mmseg benchmark configs, shrunk (tiny CoTAPViT, 32-64 px, 2 iterations),
through tools/train.py (in-process: ``main(argv)``; one run through the torchrun wrapper in a
subprocess), on tiny data sets written in the real on-disk layouts, with a CoTAP-like checkpoint."""
import glob
import json
import math
import os.path as osp
import subprocess

import pytest
import torch
from mmengine.config import Config

from cotap_test_helpers.seg_data import (TINY_ARCH, shrink_seg_config, write_ade20k,
                                         write_cityscapes, write_coco_stuff, write_nyu,
                                         write_pretrain_checkpoint, write_voc_aug)
from cotap_test_helpers.tiny_runs import REPO_ROOT, free_port, run_env
from cotap_test_helpers.tool_runs import load_tool

CFG_DIR = osp.join(REPO_ROOT, 'configs', 'benchmarks', 'mmseg')
BENCH = osp.join(REPO_ROOT, 'tools', 'benchmarks', 'mmseg')


def _load_tool(name):
    return load_tool(f'tools/{name}.py')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('mmseg_bench'))
    sd = write_pretrain_checkpoint(osp.join(root, 'pretrain.pth'))
    write_ade20k(osp.join(root, 'ade'))
    write_voc_aug(osp.join(root, 'voc'))
    write_coco_stuff(osp.join(root, 'coco'))
    write_cityscapes(osp.join(root, 'city'))
    write_nyu(osp.join(root, 'nyu'))
    return dict(root=root, pretrain=osp.join(root, 'pretrain.pth'), sd=sd)


def _shrunk(config, data, sub, tag, **kw):
    cfg = Config.fromfile(osp.join(CFG_DIR, config))
    work_dir = osp.join(data['root'], f'work_{tag}')
    cfg = shrink_seg_config(cfg, osp.join(data['root'], sub), data['pretrain'], work_dir, **kw)
    path = osp.join(data['root'], f'cfg_{tag}.py')
    cfg.dump(path)
    return path, work_dir


def _scalars(work_dir):
    files = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    assert len(files) == 1, files
    with open(files[0]) as f:
        return [json.loads(line) for line in f if line.strip()]


def _train_and_check(config, data, sub, tag, metric, **kw):
    path, work_dir = _shrunk(config, data, sub, tag, **kw)
    _load_tool('train').main([path])
    rows = _scalars(work_dir)
    losses = [r['loss'] for r in rows if 'loss' in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    evals = [r for r in rows if metric in r]
    assert len(evals) == 1
    ckpt = torch.load(osp.join(work_dir, 'iter_2.pth'), map_location='cpu', weights_only=True)
    return evals[0], ckpt['state_dict'], path, work_dir


def _assert_backbone_equals_pretrain(state, sd, expect_equal=True):
    keys = [k for k in state if k.startswith('backbone.')]
    assert keys
    for k in keys:
        same = torch.equal(state[k], sd[k[len('backbone.'):]])
        if expect_equal:
            assert same, f'{k} differs from the pretrain checkpoint'
    if not expect_equal:
        assert not all(torch.equal(state[k], sd[k[len('backbone.'):]]) for k in keys)


@pytest.mark.parametrize('config,sub,num_classes', [
    ('linear_cotap-vit-s16_1xb128-782it_ade20k-336x336.py', 'ade', 150),
    ('linear_cotap-vit-s16_1xb256-391it_coco-stuff27-336x336.py', 'coco', 27),
    ('linear_cotap-vit-s16_1xb256-391it_coco-stuff171-336x336.py', 'coco', 171),
    ('linear_cotap-vit-s16_1xb64-1563it_cityscapes-896x896.py', 'city', 19),
])
def test_linear_probe_runs_frozen(data, config, sub, num_classes):
    ev, state, _, _ = _train_and_check(config, data, sub, f'lin_{sub}{num_classes}', 'mIoU')
    assert 0 <= ev['mIoU'] <= 100 and 0 <= ev['aAcc'] <= 100
    # pretrained weights arrived (random values a fresh init cannot produce) and stayed frozen
    _assert_backbone_equals_pretrain(state, data['sd'])
    assert state['decode_head.conv_seg.weight'].shape == (num_classes, TINY_ARCH['embed_dims'], 1, 1)


def test_upernet_loads_resizes_and_finetunes(data):
    from mmengine.registry import init_default_scope
    from mmpretrain.models.utils import resize_pos_embed
    from mmseg.registry import MODELS
    config = 'upernet_cotap-vit-s16_8xb2-160k_ade20k-512x512.py'
    # 1) weights arrive, the pos-embed is resized to the config's img_size (32 px: 2x2 grid)
    path, _ = _shrunk(config, data, 'ade', 'upernet_build', train_px=64, test_px=64)
    cfg = Config.fromfile(path)
    cfg.model.backbone.img_size = 32
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    model.init_weights()
    sd = data['sd']
    got = model.backbone.state_dict()
    for k, v in sd.items():
        if k.startswith('ln1.'):
            assert k not in got  # final_norm=False: the checkpoint's final norm is not used
        elif k == 'pos_embed':
            ref = resize_pos_embed(v, (4, 4), (2, 2), mode='bicubic', num_extra_tokens=1)
            torch.testing.assert_close(got[k], ref)
        else:
            assert torch.equal(got[k], v), k
    # 2) two fine-tuning iterations + slide-mode evaluation: the backbone is trained
    ev, state, _, _ = _train_and_check(config, data, 'ade', 'upernet', 'mIoU', train_px=64,
                                       test_px=64)
    assert 0 <= ev['mIoU'] <= 100
    _assert_backbone_equals_pretrain(state, sd, expect_equal=False)


def test_depth_runs(data):
    ev, state, _, _ = _train_and_check('depth_cotap-vit-s16_4xb8-25k_nyu-480x480.py', data, 'nyu',
                                       'depth', 'rmse', train_px=64, test_px=64)
    for k in ('d1', 'abs_rel', 'rmse'):
        assert math.isfinite(ev[k])
    assert 0 <= ev['d1'] <= 1 and ev['rmse'] > 0 and ev['abs_rel'] > 0
    assert 'decode_head.depth_pred_layer.2.weight' in state


def test_wrapper_voc_probe_and_test_tool(data):
    """tools/benchmarks/mmseg/linear_probe.sh (torchrun, 1 CPU process) with the checkpoint given on
    the command line (the config names a file that does not exist), then tools/test.py."""
    path, work_dir = _shrunk('linear_cotap-vit-s16_1xb128-782it_voc12aug-336x336.py', data, 'voc',
                             'voc')
    cfg = Config.fromfile(path)
    cfg.model.backbone.init_cfg.checkpoint = osp.join(data['root'], 'missing.pth')
    cfg.dump(path)
    env = run_env({'PORT': str(free_port())})
    proc = subprocess.run([osp.join(BENCH, 'linear_probe.sh'), path, '1', data['pretrain'],
                           '--work-dir', work_dir, '--cfg-options', 'train_cfg.max_iters=2'],
                          cwd=REPO_ROOT, env=env, timeout=240, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, proc.stdout[-5000:]
    ev = [r for r in _scalars(work_dir) if 'mIoU' in r]
    assert len(ev) == 1
    ckpt = osp.join(work_dir, 'iter_2.pth')
    state = torch.load(ckpt, map_location='cpu', weights_only=True)['state_dict']
    _assert_backbone_equals_pretrain(state, data['sd'])
    # tools/test.py on the trained model gives the validation numbers of the end of training
    out = osp.join(data['root'], 'voc_test.json')
    _load_tool('test').main([path, ckpt, '--work-dir', osp.join(data['root'], 'voc_test'),
                             '--out', out])
    with open(out) as f:
        metrics = json.load(f)
    assert metrics['mIoU'] == pytest.approx(ev[0]['mIoU'], abs=1e-6)


def test_wrappers_refuse_bad_arguments(data):
    env = run_env()
    cfg = osp.join(CFG_DIR, 'depth_cotap-vit-s16_4xb8-25k_nyu-480x480.py')
    for cmd, msg in (([osp.join(BENCH, 'linear_probe.sh'), 'nope.py', '1', data['pretrain']],
                      "config 'nope.py' not found"),
                     ([osp.join(BENCH, 'depth.sh'), cfg, '1', osp.join(data['root'], 'nope.pth')],
                      'nope.pth\' not found'),
                     ([osp.join(BENCH, 'train.sh'), cfg], 'usage'),
                     ([osp.join(BENCH, 'test.sh'), cfg, 'x.pth'], 'usage')):
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=30)
        assert proc.returncode == 2 and msg in proc.stdout, (cmd, proc.stdout)

"""DenseMonitorHook switched on: the released CoTAP runs monitor COCO-Stuff-27, the demo config the
generated scenes; a missing labelled set stops before training with the keys to change; a tiny run
of the demo config logs dense/mIoU and trains exactly as without the hook."""
import glob
import json
import os.path as osp
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config

from cotap_mm.apis import train_stage
from cotap_mm.engine.hooks import DenseMonitorHook
from cotap_test_helpers.tiny_runs import REPO_ROOT

RELEASED = sorted(glob.glob(osp.join(REPO_ROOT, 'configs/cotap/cotap_vit-*_coco*.py'))) + [
    osp.join(REPO_ROOT, 'configs/cotap_vits16_coco.py')]
DEMO = osp.join(REPO_ROOT, 'configs/cotap/cotap_vit-tiny-p8_1xb8-demo_synthetic.py')


def _monitor(cfg: Config) -> dict:
    hooks = [h for h in cfg.custom_hooks if h['type'] == 'DenseMonitorHook']
    assert len(hooks) == 1
    return hooks[0]


def test_every_released_run_is_found():
    names = {osp.basename(p) for p in RELEASED}
    assert len(names) == 11 and 'cotap_vit-base-p8-dino_8xb8-210k_coco-in1k.py' in names
    assert 'cotap_vit-small-p16_4xb28-240k_coco.py' in names


@pytest.mark.parametrize('path', RELEASED, ids=osp.basename)
def test_released_runs_monitor_coco_stuff27(path):
    cfg = Config.fromfile(path)
    assert cfg.custom_hooks[0]['type'] == 'EMATeacherHook'  # the teacher stays first
    hook = _monitor(cfg)
    assert (hook['interval'], hook['keep_best'], hook['features']) == (10000, 5, '2C')
    assert (hook['max_train'], hook['max_val'], hook['image_size']) == (1000, 500, 224)
    tr, va = hook['train_dataset'], hook['val_dataset']
    assert tr['type'] == va['type'] == 'COCOStuff27Dataset'
    assert tr['data_root'] == va['data_root'] == cfg.coco_stuff_root == 'data/coco_stuff164k'
    assert tr['ann_file'] == 'curated/train2017/Coco164kFull_Stuff_Coarse.txt'
    assert va['ann_file'] == 'curated/val2017/Coco164kFull_Stuff_Coarse_7.txt'
    assert va['data_prefix'] == dict(img_path='images/val2017', seg_map_path='annotations/val2017')
    DenseMonitorHook(**{k: v for k, v in hook.items() if k != 'type'})  # valid arguments


def test_demo_configs_monitor_generated_scenes():
    for path in (DEMO, osp.join(REPO_ROOT, 'configs/cotap/cotap-ddssl_vit-tiny-p8_1xb8-demo_synthetic.py')):
        hook = _monitor(Config.fromfile(path))
        assert hook['train_dataset']['type'] == hook['val_dataset']['type'] == 'SyntheticScenesSeg'
        assert hook['train_dataset']['split'] == 'train' and hook['val_dataset']['split'] == 'val'
        assert hook['train_dataset']['seed'] == 300  # neither the training nor the probe scenes
        assert hook['features'] == '2C' and hook['image_size'] == 64


def test_missing_coco_stuff_names_the_path_and_the_keys(tmp_path, monkeypatch):
    cfg = Config.fromfile(RELEASED[0])
    hook_cfg = _monitor(cfg)
    hook = DenseMonitorHook(**{k: v for k, v in hook_cfg.items() if k != 'type'})
    monkeypatch.chdir(tmp_path)  # no data/coco_stuff164k here
    runner = SimpleNamespace(cfg=cfg, work_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        hook.before_train(runner)
    msg = str(err.value)
    assert 'custom_hooks.1' in msg and 'train_dataset (COCOStuff27Dataset)' in msg
    assert 'needs data/coco_stuff164k, which does not exist' in msg
    assert '--cfg-options custom_hooks.1.train_dataset.data_root=DIR' in msg
    # the root exists but not the curated list: that file is named
    (tmp_path / 'data/coco_stuff164k/images/train2017').mkdir(parents=True)
    (tmp_path / 'data/coco_stuff164k/annotations/train2017').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match='curated/train2017/Coco164kFull_Stuff_Coarse.txt'):
        hook.before_train(runner)


def _tiny_demo_stage(work: str, with_monitor: bool) -> str:
    extra = {'train_dataloader.dataset.num_samples': 16,
             'custom_hooks.2.interval': 6, 'custom_hooks.2.train_dataset.num_samples': 6,
             'custom_hooks.2.val_dataset.num_samples': 3}
    if not with_monitor:
        extra = {'train_dataloader.dataset.num_samples': 16,
                 'custom_hooks': Config.fromfile(DEMO).custom_hooks[:2]}
    return train_stage(DEMO, work, 12, 0, extra=extra)


def test_tiny_demo_run_logs_dense_miou_and_trains_as_without(tmp_path, one_thread):
    assert [h['type'] for h in Config.fromfile(DEMO).custom_hooks][2] == 'DenseMonitorHook'
    with_hook = _tiny_demo_stage(str(tmp_path / 'with'), True)
    # iteration 6: the filter's prototypes do not exist yet (the bank of 128 fills in 8 steps):
    # skipped; iteration 12 (the last) is scored
    log = json.load(open(tmp_path / 'with' / 'dense_monitor.json'))
    assert [h['iter'] for h in log['history']] == [12] and log['features'] == '2C'
    rows = [json.loads(line) for line in
            open(glob.glob(str(tmp_path / 'with' / '*/vis_data/scalars.json'))[0])]
    logged = [r['dense/mIoU'] for r in rows if 'dense/mIoU' in r]
    assert logged == [log['history'][0]['mIoU']] and 0.0 <= logged[0] <= 1.0
    assert osp.isfile(tmp_path / 'with' / 'best_dense_mIoU_iter_12.pth')
    without = _tiny_demo_stage(str(tmp_path / 'without'), False)
    a = torch.load(with_hook, weights_only=True)['state_dict']
    b = torch.load(without, weights_only=True)['state_dict']
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), 'the monitor changed the training'

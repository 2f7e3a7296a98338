import glob
import json
import logging
import os
import os.path as osp
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub

import cotap_mm  # noqa: F401
from cotap_mm.datasets.synthetic_scenes import write_ade20k_layout
from cotap_mm.engine.hooks import DenseMonitorHook
from cotap_mm.evaluation.frozen_model import dense_feature_extractors, load_frozen_model
from cotap_mm.evaluation.labelled_sets import load_seg_arrays
from cotap_mm.evaluation.nn_retrieval import nn_retrieval_eval
from cotap_mm.evaluation.linear_probe import extract_features
from cotap_test_helpers.tiny_runs import REPO_ROOT
from cotap_test_helpers.tool_runs import train_in_process

DINO = osp.join(REPO_ROOT, 'configs/dino/dino_vit-tiny-p8_1xb8-1500it_synthetic.py')
GEN = dict(type='SyntheticScenesSeg', split='train', num_samples=3, image_size=32, num_classes=3)


class _FakeRunner:
    """What the best-k bookkeeping touches: save_checkpoint writes a file and records which
    best_* files existed at that moment."""

    def __init__(self, work_dir):
        self.work_dir = work_dir
        self.iter = 0
        self.logger = logging.getLogger('fake_runner')
        self.seen_at_save = []

    def save_checkpoint(self, out_dir, filename, **kwargs):
        self.seen_at_save.append(sorted(osp.basename(p) for p in
                                        glob.glob(osp.join(out_dir, 'best_*.pth'))))
        torch.save({'state_dict': {}, 'meta': {}}, osp.join(out_dir, filename))


def test_keeps_the_best_k_and_deletes_only_after_the_new_one_exists(tmp_path):
    hook = DenseMonitorHook(GEN, GEN, keep_best=2, out_dir=str(tmp_path))
    runner = _FakeRunner(str(tmp_path))
    for it, score in ((1, 0.3), (2, 0.5), (3, 0.1), (4, 0.6), (5, 0.5)):
        hook._keep(runner, it, score)
    assert [(e['iter'], e['mIoU']) for e in hook.kept] == [(4, 0.6), (2, 0.5)]
    assert sorted(os.listdir(tmp_path)) == ['best_dense_mIoU_iter_2.pth',
                                            'best_dense_mIoU_iter_4.pth']
    # iteration 3 (0.1) and 5 (a tie with the worst kept) are not saved; when iteration 4 is
    # saved, iteration 1 (the one it displaces) still exists
    assert len(runner.seen_at_save) == 3
    assert runner.seen_at_save[2] == ['best_dense_mIoU_iter_1.pth', 'best_dense_mIoU_iter_2.pth']
    # the list travels in the checkpoint meta and comes back on resume
    ckpt = {'meta': {}}
    hook.before_save_checkpoint(runner, ckpt)
    fresh = DenseMonitorHook(GEN, GEN, keep_best=2)
    os.remove(tmp_path / 'best_dense_mIoU_iter_2.pth')
    fresh.after_load_checkpoint(runner, ckpt)
    assert [e['iter'] for e in fresh.kept] == [4]  # the missing file leaves the list


def test_failed_save_leaves_the_kept_ones(tmp_path):
    hook = DenseMonitorHook(GEN, GEN, keep_best=1, out_dir=str(tmp_path))
    runner = _FakeRunner(str(tmp_path))
    hook._keep(runner, 1, 0.2)

    def broken(out_dir, filename, **kwargs):
        with open(osp.join(out_dir, filename), 'w') as f:
            f.write('partial')
        raise OSError('disk full')

    runner.save_checkpoint = broken
    with pytest.raises(OSError, match='disk full'):
        hook._keep(runner, 2, 0.9)
    assert os.listdir(tmp_path) == ['best_dense_mIoU_iter_1.pth']  # no temp file left
    assert [e['iter'] for e in hook.kept] == [1]


def test_bad_arguments():
    with pytest.raises(ValueError, match='interval'):
        DenseMonitorHook(GEN, GEN, interval=0)
    with pytest.raises(ValueError, match='features'):
        DenseMonitorHook(GEN, GEN, features='3C')
    with pytest.raises(ValueError, match='val_dataset'):
        DenseMonitorHook(GEN, 'scenes')


def test_tiny_training_run_logs_dense_miou_and_keeps_best(tmp_path):
    root = str(tmp_path / 'scenes')
    write_ade20k_layout(root, 0, 2, seed=1, size=48, num_classes=3)
    val = dict(type='BaseSegDataset', data_root=root, img_suffix='.jpg', seg_map_suffix='.png',
               data_prefix=dict(img_path='images/validation',
                                seg_map_path='annotations/validation'),
               metainfo=dict(classes=('background', 'c1', 'c2', 'c3')))
    hook = dict(type='DenseMonitorHook', train_dataset=GEN, val_dataset=val, interval=1,
                image_size=32, k=5, keep_best=2)
    hooks = Config.fromfile(DINO).to_dict()['custom_hooks'] + [hook]  # EMA teacher kept
    cfg = tmp_path / 'dino_dense_monitor.py'
    cfg.write_text(f'_base_ = [{DINO!r}]\ncustom_hooks = {hooks!r}\n')
    work = tmp_path / 'work'
    train_in_process([
        str(cfg), '--work-dir', str(work), '--cfg-options', 'train_cfg.max_iters=3',
        'train_dataloader.batch_size=2', 'train_dataloader.dataset.num_samples=4',
        'default_hooks.checkpoint.interval=3', 'default_hooks.logger.interval=1'
    ])
    with open(work / 'dense_monitor.json') as f:
        log = json.load(f)
    assert [h['iter'] for h in log['history']] == [1, 2, 3]
    scores = {h['iter']: h['mIoU'] for h in log['history']}
    best2 = sorted(scores, key=lambda i: -scores[i])[:2]
    assert sorted(e['iter'] for e in log['kept']) == sorted(best2)
    files = sorted(p.name for p in work.iterdir() if p.name.startswith(('best_', '.best_')))
    assert files == sorted(f'best_dense_mIoU_iter_{i}.pth' for i in best2)
    # through the message hub and the visualizer
    assert MessageHub.get_current_instance().get_scalar('dense/mIoU').current() == scores[3]
    rows = [json.loads(line) for line in open(glob.glob(str(work / '*/vis_data/scalars.json'))[0])]
    assert [r['dense/mIoU'] for r in rows if 'dense/mIoU' in r] == [scores[1], scores[2], scores[3]]
    # the last score is NN retrieval of the last checkpoint, recomputed independently
    model = load_frozen_model(DINO, str(work / 'iter_3.pth'))
    extract = dense_feature_extractors(model, ['C'])['C']
    tr_i, tr_m, _ = load_seg_arrays(GEN, 32)
    va_i, va_m, _ = load_seg_arrays(val, 32)
    tr_f, tr_m = extract_features(extract, (tr_i, tr_m))
    va_f, va_m = extract_features(extract, (va_i, va_m))
    ref = nn_retrieval_eval(tr_f, tr_m, va_f, va_m, 4, k=5, temperature=0.02)
    assert scores[3] == pytest.approx(ref['mIoU'], abs=1e-6)
    # a kept checkpoint loads without unpickling anything but plain data
    kept = torch.load(str(work / f'best_dense_mIoU_iter_{best2[0]}.pth'), weights_only=True)
    assert 'backbone.cls_token' in kept['state_dict'] and 'optimizer' not in kept


def test_2c_features_wait_for_the_filter_prototypes():
    from cotap_test_helpers.cotap_checkpoint import build_tiny_cotap
    model = build_tiny_cotap(dict(embed_dims=32, num_layers=2, num_heads=2,
                                  feedforward_channels=64), img_size=32, num_prototypes=4,
                             prototypes_initialized=False)
    hook = DenseMonitorHook(GEN, GEN, features='2C', k=3)
    imgs, masks, _ = load_seg_arrays(GEN, 32)
    hook.data = dict(train=(imgs, masks), val=(imgs, masks), num_classes=4, per_image=None)
    warnings = []
    runner = SimpleNamespace(model=model, iter=4, logger=SimpleNamespace(warning=warnings.append))
    assert hook.evaluate(runner) is None
    assert 'iteration 5 skipped' in warnings[0] and 'never initialised' in warnings[0]
    model.neck.mark_initialized()
    model.train()
    res = hook.evaluate(runner)
    assert model.training  # mode restored
    # reference: CoTAP.extract_feat on the images normalised by hand
    pre = model.data_preprocessor
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        f = model.eval().extract_feat((x - pre.mean.view(1, 3, 1, 1)) / pre.std.view(1, 3, 1, 1))
    assert f.shape[1] == 64
    ref = nn_retrieval_eval(f, masks, f, masks, 4, k=3, temperature=0.02)
    assert res['mIoU'] == pytest.approx(ref['mIoU'], abs=1e-6)
    assert res['memory_entries'] == ref['memory_entries'] == 3 * 16

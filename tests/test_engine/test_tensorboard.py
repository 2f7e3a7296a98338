"""TensorBoard as a visualiser backend (the ``tensorboard`` extra): a tiny CoTAP run writes every
logged loss term and the feature pictures into its event file, with the values the local backend
logs."""
import glob
import json
import os.path as osp

import pytest

from cotap_test_helpers.tiny_runs import REPO_ROOT
from cotap_test_helpers.tool_runs import train_in_process

DEMO_CFG = osp.join(REPO_ROOT, 'configs', 'cotap', 'cotap_vit-tiny-p8_1xb8-demo_synthetic.py')
COTAP_TERMS = ('loss_cotap', 'loss_patch_cluster', 'loss_cls_cluster', 'loss_cls_neighbor',
               'loss_proto_entropy')


def test_tensorboard_event_file_has_every_loss_term(tmp_path, one_thread):
    pytest.importorskip('tensorboard', reason='tensorboard is not installed: pip install -e '
                        '.[tensorboard] (the tests extra installs it)')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cfg = tmp_path / 'cotap_tensorboard.py'
    cfg.write_text(f'_base_ = [{DEMO_CFG!r}]\n'
                   "visualizer = dict(vis_backends=[dict(type='LocalVisBackend'),\n"
                   "                                dict(type='TensorboardVisBackend')])\n")
    work = tmp_path / 'work'
    train_in_process([str(cfg), '--work-dir', str(work), '--cfg-options',
                      'train_cfg.max_iters=3', 'default_hooks.logger.interval=1'])
    events = glob.glob(str(work / '*' / 'vis_data' / 'events.out.tfevents.*'))
    assert len(events) == 1, events
    with open(glob.glob(str(work / '*' / 'vis_data' / 'scalars.json'))[0]) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    acc = EventAccumulator(osp.dirname(events[0]), size_guidance={'scalars': 0, 'images': 0})
    acc.Reload()
    tags = set(acc.Tags()['scalars'])
    logged = {k for r in rows for k in r if k.startswith('loss')}
    assert set(COTAP_TERMS) | {'loss'} <= logged
    assert logged <= tags, f'missing in the event file: {sorted(logged - tags)}'
    for key in logged:
        local = {r['step']: r[key] for r in rows if key in r}
        board = {e.step: e.value for e in acc.Scalars(key)}
        assert sorted(board) == sorted(local) == [1, 2, 3]
        for step, value in local.items():
            assert board[step] == pytest.approx(value, rel=1e-5, abs=1e-6), (key, step)
    # the FeatureVisualizationHook pictures of the last iteration
    assert {f'feature_vis_img{i}' for i in range(4)} <= set(acc.Tags()['images'])
    assert [e.step for e in acc.Images('feature_vis_img0')] == [3]

"""tools/demo.py end to end at toy length: every stage runs, results and pictures are written."""
import json
import os.path as osp
import sys

from cotap_test_helpers.tiny_runs import REPO_ROOT, run, run_env


def test_demo_toy_run(tmp_path):
    work = str(tmp_path / 'demo')
    cmd = [sys.executable, osp.join(REPO_ROOT, 'tools/demo.py'), '--work-dir', work,
           '--image-iters', '6', '--cotap-iters', '4', '--probe-train', '16', '--probe-val', '8',
           '--probe-epochs', '2']
    run(cmd, env=run_env(), timeout=600)
    with open(osp.join(work, 'results.json')) as f:
        rows = json.load(f)
    names = [r['name'] for r in rows]
    assert names[0] == 'random init' and 'CoTAP' in names[-1] and len(rows) == 4
    for r in rows:
        assert 0.0 <= r['mIoU'] <= 1.0 and r['dispersion']['dispersion'] > 0
    # CoTAP features are the object-aware filter's concat: twice the backbone width
    assert rows[-1]['feature_shape'][0] == 2 * rows[0]['feature_shape'][0]
    assert osp.isfile(osp.join(work, 'figures', 'random_init_0.png'))
    # a second call finds every stage's checkpoint and only re-evaluates
    proc = run(cmd, env=run_env(), timeout=600)
    assert proc.stdout.count('stage already done') == 3

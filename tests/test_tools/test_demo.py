"""tools/demo.py end to end at toy length: every stage runs, results and pictures are written."""
import json
import os.path as osp
import sys

from cotap_test_helpers.tiny_runs import REPO_ROOT, run, run_env


def test_demo_toy_run(tmp_path):
    work = str(tmp_path / 'demo')
    cmd = [sys.executable, osp.join(REPO_ROOT, 'tools/demo.py'), '--work-dir', work,
           '--image-iters', '6', '--cotap-iters', '12', '--probe-train', '16', '--probe-val', '8',
           '--probe-epochs', '2', '--oc-clusters', '12']  # CoTAP's prototypes exist from step 9
    run(cmd, env=run_env(), timeout=600)
    with open(osp.join(work, 'results.json')) as f:
        rows = json.load(f)
    got = [(r['name'], r['features'], r['feature_shape'][0]) for r in rows]
    assert got == [('random init', 'C', 96), ('image-level (DINO, 6 it)', 'C', 96),
                   ('image-level + 12 it DINO (control)', 'C', 96),
                   ('control + untrained filter (equal-width control)', '2C', 192),
                   ('image-level + 12 it CoTAP', 'C', 96), ('image-level + 12 it CoTAP', '2C', 192)]
    for r in rows:
        for key in ('mIoU', 'oc_mIoU', 'nn_mIoU'):
            assert 0.0 <= r[key] <= 1.0
        assert r['dispersion']['dispersion'] > 0
        assert set(r['protocols']['overclustering']) == {'hungarian_K9', 'majority_K12'}
    for fig in ('random_init_0.png', 'control_plus_untrained_filter_2C_0.png',
                'image-level_plus_12_it_CoTAP_2C_0.png', 'image-level_plus_12_it_CoTAP_0.png'):
        assert osp.isfile(osp.join(work, 'figures', fig)), fig
    md = open(osp.join(work, 'results.md')).read()
    assert '| CoTAP - equal-width control, 2C vs 2C |' in md and 'carry a claim' in md
    # a second call finds every stage's checkpoint and only re-evaluates
    proc = run(cmd, env=run_env(), timeout=600)
    assert proc.stdout.count('stage already done') == 3


def test_demo_refuses_a_too_small_bank_before_training(capsys):
    from cotap_test_helpers.tool_runs import load_tool
    tool = load_tool('tools/demo.py')
    try:
        tool.parse_args(['--probe-train', '8'])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError('--probe-train 8 was accepted')
    assert "the equal-width control fills the prototype bank" in capsys.readouterr().err
    assert tool.parse_args(['--probe-train', '8', '--skip-control']).probe_train == 8

"""tools/benchmarks/bench_dense_methods.py at toy length: every protocol on C, CoTAP's 2C and the
equal-width control; the section goes to the work dir, docs/ only with --update-docs; a re-run only
re-evaluates. (The library parts are tested in tests/test_apis/.)"""
import hashlib
import json
import os.path as osp

from cotap_test_helpers.tool_runs import load_tool
from cotap_test_helpers.tiny_runs import REPO_ROOT


def _tool():
    return load_tool('tools/benchmarks/bench_dense_methods.py')


def _docs_state():
    """Hash and mtime of every file under docs/."""
    import glob
    import os
    out = {}
    for p in sorted(glob.glob(osp.join(REPO_ROOT, 'docs', '**'), recursive=True)):
        if osp.isfile(p):
            out[p] = (hashlib.sha256(open(p, 'rb').read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


def test_every_method_config_exists():
    tool = _tool()
    assert tool.CONTROL in tool.METHODS and tool.METHODS[tool.CONTROL][1] == 'load_from'
    for cfg, mode, _ in tool.METHODS.values():
        assert osp.isfile(cfg) and mode in ('load_from', 'init_from')
    assert tool.DOCS == osp.join(REPO_ROOT, 'docs/benchmarks.md')


def test_toy_benchmark_reports_leaves_docs_alone_and_resumes(tmp_path, one_thread):
    """Control + CoTAP at toy length: the three protocols on C / 2C / the equal-width control, the
    section in the work dir (docs/ untouched), per-seed JSON, a re-run that only re-evaluates."""
    tool = _tool()
    docs_before = _docs_state()
    work = tmp_path / 'bench'
    # CoTAP's bank (128) fills in 8 steps, its prototypes exist from step 9: 10 steps give its 2C
    argv = ['--seeds', '0', '--work-dir', str(work), '--image-iters', '2', '--extra-iters', '10',
            '--methods', 'CoTAP', '--probe-train', '16', '--probe-val', '3', '--probe-epochs', '1',
            '--oc-clusters', '12']
    results = tool.main(argv)
    assert _docs_state() == docs_before  # a default run never writes docs/
    control, cotap = f'+ 10 it {tool.CONTROL}', '+ 10 it CoTAP'
    assert list(results) == ['random init [C]', 'image-level start (DINO, 2 it) [C]',
                             f'{control} [C]', f'{tool.EQUAL_WIDTH} [2C]', f'{cotap} [C]',
                             f'{cotap} [2C]']
    assert results[f'{tool.EQUAL_WIDTH} [2C]']['dim'] == 192 == results[f'{cotap} [2C]']['dim']
    for r in results.values():
        for key in ('mIoU', 'oc_mIoU', 'nn_mIoU'):
            assert len(r[key]) == 1 and 0.0 <= r[key][0] <= 100.0
    assert results[f'{control} [C]']['step_time'][0] > 0
    assert results[f'{control} [C]']['peak_mb'][0] >= 0
    saved = json.load(open(work / 'results.json'))
    assert saved['seeds'] == [0] and saved['results'] == results
    section = open(work / 'section.md').read()
    assert section.startswith('## Dense benchmark (tiny ViT, generated scenes)')
    assert f'| {tool.EQUAL_WIDTH} | 2C (192-d) |' in section and '| 1.00 |' in section
    assert '| CoTAP - equal-width control, 2C vs 2C |' in section
    assert '| CoTAP - control, C vs C |' in section and 'carry a claim' in section
    again = tool.main(argv)  # every stage found done: same numbers, timings read back
    assert again == results


def test_update_docs_replaces_only_the_section(tmp_path, monkeypatch):
    """--update-docs writes the section into the docs file as well (here a copy), nothing else."""
    tool = _tool()
    docs = tmp_path / 'benchmarks.md'
    docs.write_text('# Benchmarks\n\n## Dense benchmark (tiny ViT, generated scenes)\n\nold\n\n'
                    '## Other\n\nkept\n')
    monkeypatch.setattr(tool, 'DOCS', str(docs))
    section = '## Dense benchmark (tiny ViT, generated scenes)\n\nnew\n'
    monkeypatch.setattr(tool, 'run_seed', lambda seed, args, data: [])
    monkeypatch.setattr(tool, 'report', lambda per_seed, args, cmd, seconds: section)
    monkeypatch.setattr(tool, 'synthetic_probe_data', lambda *a: None)
    tool.main(['--work-dir', str(tmp_path / 'w')])
    assert docs.read_text().endswith('## Dense benchmark (tiny ViT, generated scenes)\n\nold\n\n'
                                     '## Other\n\nkept\n')  # default: untouched
    assert (tmp_path / 'w' / 'section.md').read_text() == section
    tool.main(['--work-dir', str(tmp_path / 'w'), '--update-docs'])
    assert docs.read_text() == ('# Benchmarks\n\n## Dense benchmark (tiny ViT, generated scenes)'
                                '\n\nnew\n\n## Other\n\nkept\n')
    other = tmp_path / 'other.md'  # --out: a file of its own, this section replaced in it
    other.write_text('# Mine\n\n## Kept\n\nyes\n')
    tool.main(['--work-dir', str(tmp_path / 'w'), '--out', str(other)])
    assert other.read_text() == '# Mine\n\n## Kept\n\nyes\n\n' + section


def test_settings_the_evaluation_would_refuse_are_refused_before_training(capsys):
    tool = _tool()
    for argv, message in ((['--oc-clusters', '5'], '--oc-clusters must be >= the 9 classes'),
                          (['--probe-train', '10'], '--probe-train must be >= 16'),
                          (['--nn-temperature', '0'], '--nn-temperature > 0')):
        try:
            tool.parse_args(argv)
        except SystemExit as e:
            assert e.code == 2
        else:
            raise AssertionError(f'{argv} was accepted')
        assert message in capsys.readouterr().err

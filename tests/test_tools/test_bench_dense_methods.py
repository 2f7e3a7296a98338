"""tools/benchmarks/bench_dense_methods.py: its report replaces only its own section of the file."""
import json
import math
import os.path as osp

from cotap_test_helpers.tool_runs import load_tool


def _tool():
    return load_tool('tools/benchmarks/bench_dense_methods.py')


def test_write_section_replaces_keeps_and_appends(tmp_path):
    write = _tool().write_section
    path = str(tmp_path / 'sub' / 'benchmarks.md')
    write(path, '## A\n\nfirst\n')  # a missing file (and folder) is created with the title
    assert open(path).read() == '# Benchmarks\n\n## A\n\nfirst\n'
    with open(path, 'a') as f:
        f.write('\n## B\n\nkept\n### B.1\n\nkept too\n')
    write(path, '## A\n\nsecond\n')  # replaced in place, B untouched
    assert open(path).read() == '# Benchmarks\n\n## A\n\nsecond\n\n## B\n\nkept\n### B.1\n\nkept too\n'
    write(path, '## B\n\nnew b\n')  # the last section: replaced up to the end, sub-sections too
    write(path, '## C\n\nc\n')  # a new title goes at the end
    assert open(path).read() == '# Benchmarks\n\n## A\n\nsecond\n\n## B\n\nnew b\n\n## C\n\nc\n'


def test_every_method_config_exists():
    tool = _tool()
    assert tool.CONTROL in tool.METHODS and tool.METHODS[tool.CONTROL][1] == 'load_from'
    for cfg, mode, _ in tool.METHODS.values():
        assert osp.isfile(cfg) and mode in ('load_from', 'init_from')


def _run_stage(tool, capsys, work_dir: str, iters: int) -> dict:
    spec = dict(cfg=tool.IMAGE_LEVEL_CFG, work_dir=work_dir, iters=iters, seed=0, mode='none',
                start=None, overrides={'train_dataloader.dataset.num_samples': 4,
                                       'train_dataloader.batch_size': 2})
    tool._stage_main(spec)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_stage_keeps_its_measurements_for_a_rerun(tmp_path, capsys):
    """A stage trained once reports its step time and memory again when a re-run finds it done."""
    from mmengine.runner import Runner
    tool = _tool()
    train = Runner.train
    work = str(tmp_path / 'dino')
    first = _run_stage(tool, capsys, work, iters=2)
    assert Runner.train is train  # the measuring wrapper is removed again
    assert osp.isfile(first['ckpt']) and first['step_time'] > 0 and first['peak_mb'] >= 0
    saved = json.load(open(osp.join(work, tool.STAGE_STATS)))
    assert saved == dict(step_time=first['step_time'], peak_mb=first['peak_mb'])
    again = _run_stage(tool, capsys, work, iters=2)  # checkpoint there: no training
    assert again == first


def test_cached_stage_without_measurements_reports_nan(tmp_path, capsys):
    tool = _tool()
    work = tmp_path / 'old'
    work.mkdir()
    (work / 'iter_3.pth').write_bytes(b'')  # a stage done before measurements were kept
    out = _run_stage(tool, capsys, str(work), iters=3)
    assert out['ckpt'] == str(work / 'iter_3.pth')
    assert math.isnan(out['step_time']) and math.isnan(out['peak_mb'])


def test_toy_benchmark_reports_and_resumes(tmp_path, capsys):
    """Control + CoTAP at toy length: table, per-seed JSON, and a re-run that only re-evaluates."""
    tool = _tool()
    out = str(tmp_path / 'benchmarks.md')
    argv = ['--seeds', '0', '--work-dir', str(tmp_path / 'bench'), '--image-iters', '2',
            '--extra-iters', '2', '--methods', 'CoTAP', '--probe-train', '6', '--probe-val', '3',
            '--probe-epochs', '1', '--out', out]
    results = tool.main(argv)
    control = results[f'+ 2 it {tool.CONTROL}']
    assert set(results) == {'random init', 'image-level start (DINO, 2 it)', f'+ 2 it {tool.CONTROL}',
                            '+ 2 it CoTAP'}
    assert control['step_time'][0] > 0 and control['peak_mb'][0] >= 0
    saved = json.load(open(tmp_path / 'bench' / 'results.json'))
    assert saved['seeds'] == [0] and saved['results'] == results
    table = open(out).read()
    assert '| + 2 it CoTAP |' in table and '| 1.00 |' in table  # ratios against the control
    again = tool.main(argv)  # every stage found done: same numbers, timings read back
    assert again == results

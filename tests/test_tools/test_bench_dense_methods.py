"""tools/benchmarks/bench_dense_methods.py: its report replaces only its own section of the file."""
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

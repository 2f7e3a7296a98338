"""Commands as printed: the launch wrappers pick the project's Python without an activated venv,
say in one line how to set one up when there is none, and every Python tool run by a Python that
lacks the stack stops with one line naming the environment (no traceback)."""
import os
import os.path as osp
import subprocess
import sys

import pytest

from cotap_test_helpers.tiny_runs import REPO_ROOT

VENV = sys.prefix  # the environment running the tests (a virtualenv in `make test`)
BASE_PYTHON = osp.join(sys.base_prefix, 'bin', 'python3')
TOOLS = ['tools/train.py', 'tools/test.py', 'tools/misc/check_images.py',
         'tools/misc/compute_neighbors.py', 'tools/model_converters/vit2cotap.py',
         'tools/model_converters/publish_model.py', 'tools/model_converters/cotap2timm.py',
         'tools/benchmarks/bench_step.py', 'tools/benchmarks/bench_cotap_loss.py']
CONFIG = 'configs/cotap/cotap_vit-tiny-p8_1xb8-demo_synthetic.py'


def _bare_env(**extra) -> dict:
    """No activated environment: PATH without the venv, no VIRTUAL_ENV / PYTHON / COTAP_VENV."""
    env = {k: v for k, v in os.environ.items()
           if k not in ('VIRTUAL_ENV', 'PYTHON', 'COTAP_VENV', 'CONDA_PREFIX', 'PYTHONHOME')}
    env['PATH'] = os.pathsep.join(p for p in ('/usr/local/bin', '/usr/bin', '/bin')
                                  if not p.startswith(VENV))
    env['PYTHONPATH'] = REPO_ROOT  # this checkout's cotap_mm, as an editable install gives it
    env['OMP_NUM_THREADS'] = '1'
    env.update(extra)
    return env


def _checkout(tmp_path, with_venv: bool) -> str:
    """A checkout at tmp_path/repo: its tools/ (a link to this one's) and, optionally, a .venv
    (a link to the environment running the tests)."""
    root = tmp_path / 'repo'
    root.mkdir()
    os.symlink(osp.join(REPO_ROOT, 'tools'), root / 'tools')
    os.symlink(osp.join(REPO_ROOT, 'configs'), root / 'configs')
    if with_venv:
        os.symlink(VENV, root / '.venv')
    return str(root)


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason='the tests do not run in a virtualenv')
def test_dist_train_picks_the_repository_venv(tmp_path):
    root = _checkout(tmp_path, with_venv=True)
    proc = subprocess.run([osp.join(root, 'tools', 'dist_train.sh'), CONFIG, '1', '--help'],
                          cwd=root, env=_bare_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (f"dist_train.sh: python {root}/.venv/bin/python (the repository's .venv)"
            in proc.stderr.splitlines())
    assert 'usage: train.py' in proc.stdout  # tools/train.py ran under torchrun in that Python


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason='the tests do not run in a virtualenv')
def test_cotap_venv_and_activated_venv_are_picked(tmp_path):
    root = _checkout(tmp_path, with_venv=False)
    script = osp.join(root, 'tools', 'dist_test.sh')
    for extra, line in ((dict(COTAP_VENV=VENV), f'python {VENV}/bin/python ($COTAP_VENV)'),
                        (dict(VIRTUAL_ENV=VENV),
                         f'python {VENV}/bin/python (the activated virtualenv)')):
        proc = subprocess.run([script, CONFIG, 'none.pth', '1', '--help'], cwd=root,
                              env=_bare_env(**extra), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f'dist_test.sh: {line}' in proc.stderr.splitlines()


def test_no_environment_is_one_line_on_how_to_set_it_up(tmp_path):
    root = _checkout(tmp_path, with_venv=False)
    fake_bin = tmp_path / 'bin'  # a python3 on PATH without torch
    fake_bin.mkdir()
    (fake_bin / 'python3').write_text('#!/bin/sh\nexit 1\n')
    (fake_bin / 'python3').chmod(0o755)
    env = _bare_env(PATH=f'{fake_bin}:/usr/bin:/bin', PYTHONPATH='')
    for script, args in (('dist_train.sh', [CONFIG, '1']), ('dist_test.sh', [CONFIG, 'c.pth', '1']),
                         ('slurm_train.sh', ['part', 'job', CONFIG, 'work'])):
        proc = subprocess.run([osp.join(root, 'tools', script), *args], cwd=root, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stdout == ''
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith(f'{script}: no Python environment with cotap_mm: run `make setup`')
        assert f'(creates {root}/.venv)' in lines[0] and '`source .venv/bin/activate`' in lines[0]
    proc = subprocess.run([osp.join(root, 'tools', 'dist_train.sh')], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith('usage: ')


@pytest.mark.skipif(not osp.isfile(BASE_PYTHON) or sys.prefix == sys.base_prefix,
                    reason='no base interpreter outside the virtualenv')
@pytest.mark.parametrize('tool', TOOLS)
def test_tools_in_a_python_without_the_stack_say_which_environment(tool):
    env = _bare_env(PYTHONPATH='', PYTHONNOUSERSITE='1')
    probe = subprocess.run([BASE_PYTHON, '-c', 'import torch'], env=env, capture_output=True)
    if probe.returncode == 0:
        pytest.skip(f'{BASE_PYTHON} has torch')
    proc = subprocess.run([BASE_PYTHON, tool, '--help'], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ''
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert lines[0].startswith(f'{tool}: No module named ')
    assert lines[0].endswith('use the cotap_mm environment (`source .venv/bin/activate` after '
                             '`make setup`, or .venv/bin/python)')

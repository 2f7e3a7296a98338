"""Helpers that load the scripts under tools/ in-process, run them, and read what they log."""
import glob
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys
from types import ModuleType
from typing import Dict, List, Sequence

from .tiny_runs import REPO_ROOT


def load_tool(relpath: str, module_name: str = '') -> ModuleType:
    """Execute ``REPO_ROOT/relpath`` (e.g. ``'tools/train.py'``) as a fresh module (not added to
    ``sys.modules``) and return it; its ``main`` can then be called in-process."""
    path = osp.join(REPO_ROOT, relpath)
    name = module_name or '_tool_' + osp.splitext(relpath)[0].replace('/', '_')
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def train_in_process(argv: Sequence[str]) -> None:
    """``tools/train.py`` ``main(argv)`` in this process (argv: config, ``--work-dir``, ...)."""
    load_tool('tools/train.py', '_tool_train').main(list(argv))


def logged_loss_rows(work_dir: str) -> List[Dict]:
    """The rows with a ``loss`` entry of the latest run's ``<work_dir>/<timestamp>/vis_data/
    scalars.json`` (mmengine's LocalVisBackend, one JSON object per logged iteration)."""
    scalars = sorted(glob.glob(osp.join(str(work_dir), '*', 'vis_data', 'scalars.json')))
    assert scalars, f'no */vis_data/scalars.json under {work_dir}'
    with open(scalars[-1]) as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if 'loss' in r]


def run_tool_cli(tool: str, *args, timeout: int = 120) -> subprocess.CompletedProcess:
    """``python TOOL ARGS...`` from the repository root with ``OMP_NUM_THREADS=1``; stdout and
    stderr captured as text, the return code not checked."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, tool, *map(str, args)], cwd=REPO_ROOT, env=env,
                          timeout=timeout, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)

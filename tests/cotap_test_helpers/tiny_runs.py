"""Helpers that run tools/train.py and tools/dist_train.sh on tiny configs in subprocesses."""
import os
import os.path as osp
import socket
import subprocess
import sys
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
MOCOV3_TINY = osp.join(REPO_ROOT, 'configs/mocov3/mocov3_vit-tiny-p8_1xb16-200it_folder.py')


def write_image_folder(root: str, num: int = 16, size: int = 72, seed: int = 0) -> str:
    """A folder of random RGB JPEG/PNG images, the layout mmpretrain's CustomDataset reads."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(num):
        arr = rng.integers(0, 256, size=(size, size + 8 * (i % 3), 3), dtype=np.uint8)
        Image.fromarray(arr).save(osp.join(root, f'img_{i:03d}.png'))
    return root


def write_test_config(path: str, base: str, extra: str = '') -> str:
    """A config inheriting ``base`` that also dumps every rank's weights at the end of training
    (``base``'s own custom hooks are kept)."""
    from mmengine.config import Config
    hooks = [dict(h) for h in Config.fromfile(base).to_dict().get('custom_hooks', [])]
    hooks.append(dict(type='DumpWeightsHook'))
    with open(path, 'w') as f:
        f.write(f"_base_ = [{base!r}]\n"
                "custom_imports = dict(imports=['cotap_mm', 'cotap_test_helpers.dump_weights_hook'],\n"
                "                      allow_failed_imports=False)\n"
                f"custom_hooks = {hooks!r}\n" + extra)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([REPO_ROOT, osp.join(REPO_ROOT, 'tests'),
                                     env.get('PYTHONPATH', '')])
    env['PYTHON'] = sys.executable
    env['OMP_NUM_THREADS'] = '1'
    env.pop('RANK', None)
    env.pop('LOCAL_RANK', None)
    env.pop('WORLD_SIZE', None)
    if extra:
        env.update(extra)
    return env


def run(cmd: List[str], env: Optional[Dict[str, str]] = None, timeout: int = 300,
        cwd: str = REPO_ROOT) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env or run_env(), timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise AssertionError(f'{" ".join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}')
    return proc

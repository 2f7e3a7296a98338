"""kill -9 in the middle of a large checkpoint write, then --resume: nothing lost, and the resumed
run ends bitwise equal to an uninterrupted one (CoTAP tiny: its random-image negatives and
partner draws use the global torch generator)."""
import glob
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
import torch

import cotap_mm  # noqa: F401
from mmengine.config import Config
from cotap_mm.utils.checkpoint import checkpoint_problem
from cotap_test_helpers.tiny_runs import REPO_ROOT, run_env
from cotap_test_helpers.tool_runs import train_in_process

pytestmark = pytest.mark.usefixtures('one_thread')
TRAIN = osp.join(REPO_ROOT, 'tools/train.py')
COTAP_TINY = osp.join(REPO_ROOT, 'configs/cotap/cotap_vit-tiny-p8_1xb8-demo_synthetic.py')
OPTS = ['train_cfg.max_iters=4', 'train_dataloader.batch_size=4',
        'default_hooks.checkpoint.interval=2', 'default_hooks.checkpoint.max_keep_ckpts=1',
        'default_hooks.logger.interval=1', 'model.bank_size=16', 'model.bank_samples_per_step=16',
        'custom_hooks.1.interval=1000']


# index of the padding hook _padded_config appends after the tiny config's own hooks
PAD = len(Config.fromfile(COTAP_TINY).custom_hooks)


def _padded_config(path) -> str:
    """The CoTAP tiny config whose checkpoints carry 64 MiB more (custom_hooks.<PAD>.mb)."""
    path.write_text(f'_base_ = [{COTAP_TINY!r}]\n'
                    "custom_imports = dict(imports=['cotap_mm', 'cotap_test_helpers.fault_hooks'],"
                    ' allow_failed_imports=False)\n'
                    'custom_hooks = _base_.custom_hooks + '
                    "[dict(type='PaddedCheckpointHook', mb=64)]\n")
    return str(path)


def _kill_while_writing(cmd, work, name, timeout=300) -> int:
    """Run ``cmd``; SIGKILL it as soon as the temporary file of checkpoint ``name`` has data."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=run_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            tmps = glob.glob(osp.join(work, f'.{name}.tmp-*'))
            if tmps and osp.getsize(tmps[0]) > 0:
                proc.send_signal(signal.SIGKILL)
                return osp.getsize(tmps[0])
            if proc.poll() is not None:
                raise AssertionError('the run ended before the kill:\n'
                                     + proc.stdout.read()[-3000:])
            time.sleep(0.001)
        raise AssertionError(f'no temporary file of {name} within {timeout} s')
    finally:
        proc.kill()
        proc.communicate()


def test_kill_during_checkpoint_write_then_resume_is_bitwise(tmp_path):
    ref = str(tmp_path / 'uninterrupted')
    train_in_process([COTAP_TINY, '--work-dir', ref, '--cfg-options', 'experiment_name=ref',
                      *OPTS])

    work = str(tmp_path / 'killed')
    cfg = _padded_config(tmp_path / 'padded.py')
    size = _kill_while_writing([sys.executable, TRAIN, cfg, '--work-dir', work,
                                '--cfg-options', *OPTS], work, 'iter_4.pth')
    # the kill landed mid-write: a partial temporary file, no iter_4.pth, and with
    # max_keep_ckpts=1 the previous checkpoint still there, intact, named by last_checkpoint
    (tmp,) = glob.glob(osp.join(work, '.iter_4.pth.tmp-*'))
    assert 0 < size <= osp.getsize(tmp) < 64 * 2**20 + 2**20
    assert not osp.exists(osp.join(work, 'iter_4.pth'))
    assert checkpoint_problem(osp.join(work, 'iter_2.pth')) is None
    with open(osp.join(work, 'last_checkpoint')) as f:
        assert f.read() == osp.join(work, 'iter_2.pth')

    # damage of the kind a non-atomic writer leaves: an empty last_checkpoint, a truncated newer
    # checkpoint; --resume skips both with a warning naming them
    open(osp.join(work, 'last_checkpoint'), 'w').close()
    with open(osp.join(work, 'iter_2.pth'), 'rb') as f:
        head = f.read(4096)
    with open(osp.join(work, 'iter_6.pth'), 'wb') as f:
        f.write(head)
    train_in_process([cfg, '--work-dir', work, '--resume', '--cfg-options', 'experiment_name=res',
                      f'custom_hooks.{PAD}.mb=0', *OPTS])
    log = max(glob.glob(osp.join(work, '*', '*.log')), key=osp.getmtime)
    with open(log) as f:
        text = f.read()
    assert f'--resume: skipped {work}/last_checkpoint: empty' in text
    assert f'--resume: skipped {work}/iter_6.pth: unreadable' in text
    assert f'--resume: resuming from {work}/iter_2.pth' in text
    assert not glob.glob(osp.join(work, '.*.tmp-*'))  # the leftover was removed (and logged)
    assert f'removed {osp.basename(tmp)}' in text

    a = torch.load(osp.join(ref, 'iter_4.pth'), weights_only=True)
    b = torch.load(osp.join(work, 'iter_4.pth'), weights_only=True)
    assert a['state_dict'].keys() == b['state_dict'].keys()
    diff = [k for k, v in a['state_dict'].items() if not torch.equal(v, b['state_dict'][k])]
    assert not diff, f'{len(diff)} tensors differ after the resume, e.g. {diff[:5]}'
    assert sorted(os.listdir(work)).count('iter_2.pth') == 0  # max_keep_ckpts=1 after the save


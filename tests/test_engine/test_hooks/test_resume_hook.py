"""Resume from the middle of a run ends bitwise equal to the uninterrupted run, for the tiny
DINO, iBOT + de-coupling and SCFS configs (CoTAP: test_atomic_checkpoint_hook.py, with a kill)."""
import os.path as osp
import shutil

import pytest
import torch

import cotap_mm  # noqa: F401
from cotap_test_helpers.tiny_runs import REPO_ROOT
from cotap_test_helpers.tool_runs import train_in_process

pytestmark = pytest.mark.usefixtures('one_thread')
CONFIGS = {
    'dino': 'configs/dino/dino_vit-tiny-p8_1xb8-1500it_synthetic.py',
    'ddssl_ibot': 'configs/ddssl/ddssl-ibot_vit-tiny-p8_1xb8-300it_synthetic.py',
    'scfs': 'configs/scfs/scfs_vit-tiny-p8_1xb8-300it_synthetic.py',
}
OPTS = ['train_cfg.max_iters=4', 'train_dataloader.batch_size=4',
        'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1']


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_resume_is_bitwise(tmp_path, name):
    cfg = osp.join(REPO_ROOT, CONFIGS[name])
    ref, resumed = tmp_path / 'ref', tmp_path / 'resumed'
    train_in_process([cfg, '--work-dir', str(ref), '--cfg-options',
                      f'experiment_name={name}_ref', *OPTS])
    resumed.mkdir()
    shutil.copy(ref / 'iter_2.pth', resumed / 'iter_2.pth')
    train_in_process([cfg, '--work-dir', str(resumed), '--resume', '--cfg-options',
                      f'experiment_name={name}_resumed', *OPTS])
    a = torch.load(ref / 'iter_4.pth', weights_only=True)
    b = torch.load(resumed / 'iter_4.pth', weights_only=True)
    diff = [k for k, v in a['state_dict'].items() if not torch.equal(v, b['state_dict'][k])]
    assert not diff, f'{len(diff)} tensors differ after the resume, e.g. {diff[:5]}'
    assert a['meta']['rng_states'][0]['torch'].equal(b['meta']['rng_states'][0]['torch'])

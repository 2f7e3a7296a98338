import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.optim import OptimWrapper, build_optim_wrapper

from cotap_mm.utils.launch import adapt_cfg_for_launcher, amp_to_fp32_on_cpu


def _amp_cfg() -> Config:
    return Config(dict(optim_wrapper=dict(type='AmpOptimWrapper', loss_scale='dynamic',
                                          optimizer=dict(type='AdamW', lr=3e-5),
                                          clip_grad=dict(max_norm=3.0))))


def test_amp_becomes_fp32_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = adapt_cfg_for_launcher(_amp_cfg(), 'none')
    ow = cfg.optim_wrapper
    assert ow.type == 'OptimWrapper' and 'loss_scale' not in ow
    assert ow.optimizer.lr == 3e-5 and ow.clip_grad.max_norm == 3.0  # the rest is kept
    wrapper = build_optim_wrapper(nn.Linear(2, 2), ow)
    assert type(wrapper) is OptimWrapper


def test_amp_kept_with_cuda_and_other_wrappers_untouched(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert amp_to_fp32_on_cpu(_amp_cfg()).optim_wrapper.type == 'AmpOptimWrapper'
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1))))
    assert amp_to_fp32_on_cpu(cfg).optim_wrapper == cfg.optim_wrapper
    assert amp_to_fp32_on_cpu(Config(dict())).get('optim_wrapper') is None


def test_bad_launcher_named():
    with pytest.raises(ValueError, match='launcher'):
        adapt_cfg_for_launcher(_amp_cfg(), 'ssh')


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_cpu_threads_one_per_process_unless_chosen(restore_threads, tmp_path):
    import logging

    from mmengine.logging import MMLogger

    from cotap_mm.utils.launch import set_cpu_threads
    log = tmp_path / 'threads.log'
    MMLogger.get_instance('cpu_threads_test', log_file=str(log), log_level=logging.INFO)
    torch.set_num_threads(2)
    assert set_cpu_threads({'OMP_NUM_THREADS': '2'}, cuda=False) == 2  # the user chose
    assert set_cpu_threads({}, cuda=True) == 2  # GPU runs keep PyTorch's setting
    assert torch.get_num_threads() == 2 and log.read_text() == ''
    assert set_cpu_threads({}, cuda=False) == 1
    assert torch.get_num_threads() == 1
    assert ('CPU run without OMP_NUM_THREADS: 1 torch thread per process (PyTorch default here: 2,'
            in log.read_text())


def test_tools_train_sets_one_thread_without_omp_num_threads(tmp_path):
    import glob
    import os
    import os.path as osp
    import subprocess
    import sys

    from cotap_test_helpers.tiny_runs import REPO_ROOT
    env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
    env.update(CUDA_VISIBLE_DEVICES='', PYTHONPATH=os.pathsep.join(
        [REPO_ROOT, osp.join(REPO_ROOT, 'tests'), env.get('PYTHONPATH', '')]))
    work = tmp_path / 'run'
    proc = subprocess.run(
        [sys.executable, 'tools/train.py', 'configs/cotap/cotap_vit-tiny-p8_1xb8-demo_synthetic.py',
         '--work-dir', str(work), '--cfg-options', 'train_cfg.max_iters=1',
         'train_dataloader.batch_size=2', 'model.bank_size=16', 'model.bank_samples_per_step=16',
         'custom_hooks.1.interval=1000'],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = open(glob.glob(osp.join(str(work), '*', '*.log'))[0]).read()
    assert text.count('CPU run without OMP_NUM_THREADS: 1 torch thread per process') == 1

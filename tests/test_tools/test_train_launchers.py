"""tools/train.py, --resume, tools/dist_train.sh (2 CPU processes) and the multi-node path."""
import fractions
import os.path as osp
import re
import subprocess
import sys

import torch
from mmengine.config import Config
from mmengine.runner import Runner

import cotap_mm  # noqa: F401
from cotap_test_helpers.tiny_runs import (MOCOV3_TINY, REPO_ROOT, free_port, run, run_env,
                                     write_image_folder, write_test_config)

TRAIN = osp.join(REPO_ROOT, 'tools/train.py')
DIST_TRAIN = osp.join(REPO_ROOT, 'tools/dist_train.sh')


def _opts(data_root: str, iters: int, ckpt_interval: int, batch: int = 8) -> list:
    return ['--cfg-options', f'train_dataloader.dataset.data_root={data_root}',
            f'train_cfg.max_iters={iters}', f'train_dataloader.batch_size={batch}',
            f'default_hooks.checkpoint.interval={ckpt_interval}', 'default_hooks.logger.interval=1']


def test_train_then_resume(tmp_path):
    data = write_image_folder(str(tmp_path / 'images'))
    work = str(tmp_path / 'work')
    run([sys.executable, TRAIN, MOCOV3_TINY, '--work-dir', work] + _opts(data, 4, 2))
    assert osp.isfile(osp.join(work, 'iter_2.pth')) and osp.isfile(osp.join(work, 'iter_4.pth'))
    saved = torch.load(osp.join(work, 'iter_2.pth'), weights_only=True)  # plain data only
    assert saved['meta']['iter'] == 2

    # resuming restores weights, optimizer and iteration, without any unsafe unpickling
    cfg = Config.fromfile(MOCOV3_TINY)
    cfg.work_dir = str(tmp_path / 'resume_check')
    cfg.train_dataloader.dataset.data_root = data
    cfg.resume = True
    cfg.load_from = osp.join(work, 'iter_2.pth')
    runner = Runner.from_cfg(cfg)
    runner.load_or_resume()
    assert runner.iter == 2
    state = runner.model.state_dict()
    for k, v in saved['state_dict'].items():
        assert torch.equal(state[k], v), k
    assert runner.optim_wrapper.state_dict()['state'], 'optimizer state not resumed'
    assert runner.message_hub.get_scalar('train/loss').data[0].size == 2

    # and training continues from iteration 3 up to 6
    proc = run([sys.executable, TRAIN, MOCOV3_TINY, '--work-dir', work, '--resume',
                osp.join(work, 'iter_2.pth')] + _opts(data, 6, 2))
    iters = [int(m) for m in re.findall(r'Iter\(train\) \[\s*(\d+)/6\]', proc.stdout)]
    assert iters[0] == 3 and iters[-1] == 6, iters
    final = torch.load(osp.join(work, 'iter_6.pth'), weights_only=True)
    assert final['meta']['iter'] == 6
    assert any(not torch.equal(final['state_dict'][k], v) for k, v in saved['state_dict'].items())


def test_train_refuses_unsafe_load_from(tmp_path):
    data = write_image_folder(str(tmp_path / 'images'), num=4)
    bad = tmp_path / 'bad.pth'
    torch.save({'state_dict': {}, 'meta': {'x': fractions.Fraction(1, 2)}}, bad)
    proc = subprocess.run([sys.executable, TRAIN, MOCOV3_TINY, '--work-dir', str(tmp_path / 'w'),
                           '--cfg-options', f'load_from={bad}', 'train_cfg.max_iters=1',
                           f'train_dataloader.dataset.data_root={data}'],
                          cwd=REPO_ROOT, env=run_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode != 0
    assert 'UnsafeCheckpointError' in proc.stdout and '--trust-checkpoint' in proc.stdout


def _assert_ranks_agree(work: str, world_size: int, iters: int) -> None:
    """Every rank trained ``iters`` steps in a world of ``world_size`` and holds the same weights."""
    dumps = [torch.load(osp.join(work, f'weights_rank{r}.pth'), weights_only=True)
             for r in range(world_size)]
    for d in dumps:
        assert d['world_size'] == world_size and d['iter'] == iters
    ref = dumps[0]['params']
    for d in dumps[1:]:
        for k, v in ref.items():
            assert torch.allclose(d['params'][k], v, atol=1e-6), k


def test_dist_train_two_cpu_processes(tmp_path):
    data = write_image_folder(str(tmp_path / 'images'))
    cfg = write_test_config(str(tmp_path / 'cfg.py'), MOCOV3_TINY)
    work = str(tmp_path / 'work')
    proc = run(['bash', DIST_TRAIN, cfg, '2', '--work-dir', work] + _opts(data, 3, 3, batch=4),
               env=run_env({'PORT': str(free_port())}))
    assert 'Distributed launcher: pytorch' in proc.stdout or 'distributed: True' in proc.stdout
    _assert_ranks_agree(work, 2, 3)
    assert osp.isfile(osp.join(work, 'iter_3.pth'))


def test_multi_node_two_launches(tmp_path):
    data = write_image_folder(str(tmp_path / 'images'))
    cfg = write_test_config(str(tmp_path / 'cfg.py'), MOCOV3_TINY)
    work = str(tmp_path / 'work')
    port = str(free_port())
    cmd = ['bash', DIST_TRAIN, cfg, '1', '--work-dir', work] + _opts(data, 3, 3, batch=4)
    procs = [subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True,
                              env=run_env({'NNODES': '2', 'NODE_RANK': str(r), 'PORT': port,
                                           'MASTER_ADDR': '127.0.0.1'}))
             for r in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    _assert_ranks_agree(work, 2, 3)


COTAP_TINY = osp.join(REPO_ROOT, 'configs/cotap/cotap_vit-tiny-p8_1xb8-demo_synthetic.py')


def test_cotap_dist_train_two_cpu_processes(tmp_path):
    """CoTAP under DDP on CPU: the k-means prototype init (rank 0 + broadcast) happens inside the
    run (bank of 16 filled after a step), and both ranks end with the same student, teacher and
    prototypes."""
    cfg = write_test_config(str(tmp_path / 'cfg.py'), COTAP_TINY)
    work = str(tmp_path / 'work')
    run(['bash', DIST_TRAIN, cfg, '2', '--work-dir', work, '--cfg-options',
         'train_cfg.max_iters=4', 'train_dataloader.batch_size=4', 'model.bank_size=16',
         'model.bank_samples_per_step=16', 'model.kmeans_iters=10',
         'default_hooks.checkpoint.interval=4', 'default_hooks.logger.interval=1'],
        env=run_env({'PORT': str(free_port())}))
    _assert_ranks_agree(work, 2, 4)
    ckpt = torch.load(osp.join(work, 'iter_4.pth'), weights_only=True)
    state = ckpt['state_dict']
    assert bool(state['neck.prototypes_initialized'])
    # the teacher is an EMA of the student: close to it, but not a copy after training steps
    diffs = [(state[k] - state['teacher.' + k]).abs().max().item()
             for k in state if k.startswith('backbone.') and state[k].is_floating_point()]
    assert max(diffs) > 0

"""load_from of the wrong architecture stops the run, naming how many keys and the first few,
and the report reaches the run's log file; the right start (a DINO-tiny checkpoint for CoTAP-tiny)
loads, with the heads it lacks listed in the log."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmpretrain.registry import MODELS

import cotap_mm  # noqa: F401
from cotap_mm.models.backbones import CoTAPViT
from cotap_mm.utils.start_weights import StartWeightsError
from cotap_test_helpers.tiny_runs import REPO_ROOT
from cotap_test_helpers.tool_runs import train_in_process

pytestmark = pytest.mark.usefixtures('one_thread')
DINO_TINY = osp.join(REPO_ROOT, 'configs/dino/dino_vit-tiny-p8_1xb8-1500it_synthetic.py')
COTAP_TINY = osp.join(REPO_ROOT, 'configs/cotap/cotap_vit-tiny-p8_1xb8-demo_synthetic.py')


COTAP_OPTS = ['model.bank_size=16', 'model.bank_samples_per_step=16',
              'custom_hooks.1.interval=1000']


def _run(cfg, work, name, load_from, *opts) -> str:
    """One training iteration of ``cfg`` started ``load_from``; returns the run's log."""
    extra = COTAP_OPTS if cfg == COTAP_TINY else []
    train_in_process([cfg, '--work-dir', str(work), '--cfg-options', f'experiment_name={name}',
                      f'load_from={load_from}', 'train_cfg.max_iters=1',
                      'train_dataloader.batch_size=2', *extra, *opts])
    with open(glob.glob(osp.join(str(work), '*', '*.log'))[0]) as f:
        return f.read()


def test_wrong_architecture_starts_are_refused(tmp_path):
    foo = tmp_path / 'foo.pth'
    torch.save({'state_dict': {'foo.weight': torch.zeros(3)}}, foo)
    with pytest.raises(StartWeightsError, match=r'load_from \(backbone\.\*\): 54 of 54 keys '
                       rf'missing from {foo}: cls_token, pos_embed'):
        _run(DINO_TINY, tmp_path / 'foo', 'sw_foo', foo)
    log = open(glob.glob(str(tmp_path / 'foo' / '*' / '*.log'))[0]).read()
    assert '54 of 54 keys missing' in log  # in the log file, not only on the console

    vit_s = tmp_path / 'vit_s16.pth'  # a random ViT-S/16 (DINO layout) into the tiny ViT
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in
                               CoTAPViT(arch='dino-s', patch_size=16).state_dict().items()}}, vit_s)
    with pytest.raises(StartWeightsError, match=r'keys shaped differently in .*vit_s16\.pth: '
                       r'cls_token \(checkpoint \[1, 1, 384\] vs model \[1, 1, 96\]\)'):
        _run(DINO_TINY, tmp_path / 'vits', 'sw_vits', vit_s)

    text = _run(DINO_TINY, tmp_path / 'lax', 'sw_lax', foo,
                'default_hooks.start_weights.strict=False')
    assert 'load_from (backbone.*): 54 of 54 keys missing' in text  # on purpose: logged only


def _grouped_new_keys(model_keys, ckpt_keys) -> str:
    """``teacher (n), neck (m), ...``: model keys outside the backbone that the checkpoint lacks,
    counted per top-level module (largest first, ties in model order; the model's own tensors as
    ``buffers``)."""
    counts = {}
    for key in model_keys:
        if not key.startswith('backbone.') and key not in ckpt_keys \
                and not key.endswith('num_batches_tracked'):
            group = key.split('.')[0] if '.' in key else 'buffers'  # e.g. loss_iter
            counts[group] = counts.get(group, 0) + 1
    order = sorted(counts, key=lambda k: -counts[k])
    return ', '.join(f'{k} ({counts[k]})' for k in order)


def test_dino_tiny_start_for_cotap_tiny_loads(tmp_path, capsys):
    dino = MODELS.build(Config.fromfile(DINO_TINY).model)
    path = tmp_path / 'dino_tiny.pth'
    torch.save({'state_dict': dino.state_dict()}, path)
    capsys.readouterr()
    text = _run(COTAP_TINY, tmp_path / 'cotap', 'sw_cotap', path)
    console = capsys.readouterr()
    cotap = MODELS.build(Config.fromfile(COTAP_TINY).model)
    new = _grouped_new_keys(cotap.state_dict(), dino.state_dict())
    assert new.startswith('teacher (')
    summary = [line for line in text.splitlines() if f'load_from {path}:' in line]
    assert len(summary) == 1 and summary[0].endswith(
        f'load_from {path}: backbone 54/54 keys loaded; not in the checkpoint, initialised by '
        f'the model: {new}')
    assert 'keys missing' not in text  # the new heads and teacher are expected: no warning
    # MMEngine's own list of every missing key is gone from the console
    assert 'missing keys in source state_dict' not in console.out + console.err
    # the frozen EMA teacher: one optimizer line, no warning per tensor
    frozen = sum(1 for p in cotap.parameters() if not p.requires_grad)
    assert frozen > 50 and 'requires_grad=False' not in text
    optimizer_lines = [line for line in text.splitlines() if 'optimizer:' in line]
    assert len(optimizer_lines) == 1
    assert f'; {frozen} frozen tensors' in optimizer_lines[0]
    assert optimizer_lines[0].endswith(f'not optimised: teacher ({frozen})')

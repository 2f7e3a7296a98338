"""cotap_mm.apis.measured_stage / training_stages: a stage keeps its measurements for a re-run; the
schedulers are stretched to the stage's length."""
import json
import math
import os.path as osp

from cotap_mm.apis import STAGE_STATS, rescale_param_schedulers, run_measured_stage
from cotap_test_helpers.tiny_runs import REPO_ROOT

DINO_CFG = osp.join(REPO_ROOT, 'configs/dino/dino_vit-tiny-p8_1xb8-1500it_synthetic.py')


def _spec(work_dir: str, iters: int) -> dict:
    return dict(cfg=DINO_CFG, work_dir=work_dir, iters=iters, seed=0, mode='none', start=None,
                overrides={'train_dataloader.dataset.num_samples': 4,
                           'train_dataloader.batch_size': 2})


def test_stage_keeps_its_measurements_for_a_rerun(tmp_path, one_thread):
    """A stage trained once reports its step time and memory again when a re-run finds it done."""
    from mmengine.runner import Runner
    train = Runner.train
    work = str(tmp_path / 'dino')
    first = run_measured_stage(_spec(work, 2))
    assert Runner.train is train  # the measuring wrapper is removed again
    assert osp.isfile(first['ckpt']) and first['step_time'] > 0 and first['peak_mb'] >= 0
    saved = json.load(open(osp.join(work, STAGE_STATS)))
    assert saved == dict(step_time=first['step_time'], peak_mb=first['peak_mb'])
    again = run_measured_stage(_spec(work, 2))  # checkpoint there: no training
    assert again == first


def test_cached_stage_without_measurements_reports_nan(tmp_path):
    work = tmp_path / 'old'
    work.mkdir()
    (work / 'iter_3.pth').write_bytes(b'')  # a stage done before measurements were kept
    out = run_measured_stage(_spec(str(work), 3))
    assert out['ckpt'] == str(work / 'iter_3.pth')
    assert math.isnan(out['step_time']) and math.isnan(out['peak_mb'])


def test_rescale_param_schedulers_stretches_begin_end_and_t_max():
    scheds = [dict(type='LinearLR', begin=0, end=30),
              dict(type='CosineAnnealingLR', T_max=1470, begin=30, end=1500),
              dict(type='Constant')]  # no begin / end: the whole config length
    rescale_param_schedulers(scheds, 100, 1500)
    assert scheds[0]['begin'] == 0 and scheds[0]['end'] == 2
    assert scheds[1] == dict(type='CosineAnnealingLR', T_max=98, begin=2, end=100)
    assert scheds[2]['begin'] == 0 and scheds[2]['end'] == 100
    short = [dict(begin=0, end=30)]
    rescale_param_schedulers(short, 10, 1500)  # 0.2 iterations would round to 0: at least 1
    assert short[0]['end'] == 1

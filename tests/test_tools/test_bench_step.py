"""tools/benchmarks/bench_step.py: its arithmetic, tables and arguments, CoTAP's late-step state,
one real training step of a released config and the data pipeline, on CPU at small size."""
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from cotap_test_helpers.cotap_checkpoint import build_tiny_cotap
from cotap_test_helpers.tool_runs import load_tool

FIVE_TERMS = {'loss_cotap', 'loss_patch_cluster', 'loss_cls_cluster', 'loss_cls_neighbor',
              'loss_proto_entropy'}


@pytest.fixture(scope='module')
def tool():
    return load_tool('tools/benchmarks/bench_step.py')


def test_median_ratio_mfu_and_cores_arithmetic(tool):
    assert tool.median([3.0, 1.0, 2.0]) == 2.0 and tool.median([4.0, 1.0, 2.0, 3.0]) == 2.5
    with pytest.raises(ValueError, match='no step was timed'):
        tool.median([])
    assert tool.ratio(2.0, 4.0) == 0.5
    assert tool.ratio(2.0, None) is None and tool.ratio(None, 1.0) is None
    assert tool.ratio(2.0, 0.0) is None
    assert tool.achieved_tflops(2e12, 0.5) == pytest.approx(4.0)
    # half the H200's fp16 peak: 494.7 TFLOP in one second
    assert tool.mfu(494.7e12, 1.0, 989.4) == pytest.approx(0.5)
    assert tool.mfu(494.7e12, 2.0, 989.4) == pytest.approx(0.25)
    with pytest.raises(ValueError, match='peak_tflops'):
        tool.mfu(1e12, 1.0, 0.0)
    with pytest.raises(ValueError, match='seconds'):
        tool.achieved_tflops(1e12, 0.0)
    # 112 images every 0.4 s = 280 images/s; at 70 images/s per core: 4 cores
    assert tool.cores_per_gpu(112, 0.4, 70.0) == pytest.approx(4.0)
    with pytest.raises(ValueError, match='gpu_step_time'):
        tool.cores_per_gpu(112, 0.0, 70.0)


@pytest.mark.parametrize('name,dtype,peak', [
    ('NVIDIA H200', 'fp16', 989.4),
    ('NVIDIA H200', 'fp32', 66.9),
    ('NVIDIA H100 80GB HBM3', 'bf16', 989.4),
    ('NVIDIA H100 PCIe', 'fp16', 756.0),
    ('NVIDIA A100-SXM4-80GB', 'bf16', 312.0),
    ('NVIDIA A10', 'fp16', 125.0),  # not the A100's
    ('NVIDIA L40S', 'fp16', 362.05),
    ('NVIDIA L4', 'fp16', 121.0),  # not the L40S's
    ('Tesla V100-SXM2-32GB', 'bf16', None),  # no bf16 tensor cores
    ('NVIDIA GeForce GTX 1080', 'fp16', None),  # unknown
])
def test_peak_tflops_table(tool, name, dtype, peak):
    assert tool.lookup_peak_tflops(name, dtype) == peak
    assert tool.lookup_peak_tflops(name, dtype, override=123.0) == 123.0


def test_peak_tflops_rejects_an_unknown_dtype(tool):
    with pytest.raises(ValueError, match="'fp16', 'bf16' or 'fp32'"):
        tool.lookup_peak_tflops('NVIDIA H200', 'fp8')


def test_images_per_index_and_gpus_of_the_released_configs(tool):
    expected = {'cotap-s-coco': (2, 4), 'cotap-s-coco-in1k': (4, 4), 'cotap-b-coco': (2, 8),
                'cotap-b-coco-in1k': (4, 8)}
    for key, (per_index, gpus) in expected.items():
        cfg = Config.fromfile(tool.config_path(key, '/nowhere'))
        assert tool.images_per_index(cfg.train_dataloader.dataset) == per_index, key
        assert tool.released_gpus(tool.MODELS[key]['config']) == gpus
        files = tool.neighbour_files(cfg.train_dataloader.dataset)
        assert [s for s, _ in files] == (['coco'] if per_index == 2 else ['coco', 'imagenet'])
    moco = Config.fromfile(tool.config_path('mocov3-s', '/nowhere'))
    assert tool.images_per_index(moco.train_dataloader.dataset) == 1
    assert tool.batch_size(8, 4, 'x') == 2
    with pytest.raises(ValueError, match='--images-per-step 6 is not a multiple of the 4'):
        tool.batch_size(6, 4, 'CoTAP ViT-S/16 COCO+IN1k')
    with pytest.raises(ValueError, match='xb'):
        tool.released_gpus('configs/cotap/cotap_vits16_coco.py')


def _row(key, flops, times, gib, **extra):
    return dict(key=key, name=key, reference='mocov3-s', images_per_step=4, flops=flops,
                times=times, peak_bytes=gib * 2**30, **extra)


def test_step_table_ratios_against_moco_in_the_same_run(tool):
    rows = [_row('mocov3-s', 100e9, [1.0, 3.0, 2.0], 1.0),
            _row('cotap-s-coco', 180e9, [4.0, 4.0, 5.0], 2.0, syncs=7),
            dict(key='cotap-b-coco', name='CoTAP B', reference='mocov3-s',
                 error='OutOfMemoryError')]
    lines = tool.step_table(rows, peak_tflops=0.1).splitlines()
    assert len(lines) == 5 and lines[0].count('|') == lines[2].count('|') == 13
    moco, cotap, failed = lines[2:]
    # FLOPs, time, time/FLOP and memory ratios of the reference are 1; 50 % of a 0.1 TFLOP/s peak
    assert '| 100 | 2.000 | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 | 0.050 | 50.0 % | - |' in moco
    # 1.8x the FLOPs in 2x the time: 1.11x slower than its FLOPs predict; 45 %, 7 syncs
    assert '| 180 | 4.000 | 2.00 | 1.80 | 2.00 | 1.11 | 2.00 | 0.045 | 45.0 % | 7 |' in cotap
    assert failed.startswith('| CoTAP B | failed: OutOfMemoryError |')
    no_peak = tool.step_table(rows[:1], peak_tflops=None).splitlines()[2]
    assert no_peak.endswith('| 0.050 | - | - |')


def test_gpu_step_times_and_the_data_table(tool):
    keys = ['mocov3-s', 'cotap-s-coco']
    times = tool.parse_gpu_step_times(['0.5', 'cotap-s-coco=0.25'], keys)
    assert times == {'mocov3-s': 0.5, 'cotap-s-coco': 0.25}
    for bad, match in (('0', 'SECONDS > 0'), ('abc', 'SECONDS > 0'),
                       ('cotap=1', "unknown model key 'cotap'")):
        with pytest.raises(ValueError, match=match):
            tool.parse_gpu_step_times([bad], keys)
    rows = [dict(key='cotap-s-coco', name='CoTAP', images_per_index=2, images_per_step=112,
                 images_per_s_core=70.0),
            dict(key='dino-s', name='DINO', images_per_index=1, images_per_step=112,
                 images_per_s_core=56.0)]
    lines = tool.data_table(rows, {'cotap-s-coco': 0.4}).splitlines()
    assert lines[2] == '| CoTAP | 2 | 112 | 70.0 | 0.400 | 4.0 |'
    assert lines[3] == '| DINO | 1 | 112 | 56.0 | - | - |'


@pytest.mark.parametrize('argv,message', [
    (['--device', 'tpu'], "--device expects 'cpu', 'cuda' or 'cuda:N'"),
    (['--amp', 'fp16'], '--amp fp16 needs --device cuda'),
    (['--warmup', '0'], '--warmup must be >= 1 (FLOPs are counted over the last warm-up step)'),
    (['--steps', '0'], '--steps must be >= 1'),
    (['--images-per-step', '0'], '--images-per-step must be >= 1'),
    (['--num-images', '7'], '--num-images must be >= 8 (7 neighbours per image)'),
    (['--image-size', '64', '64'], '--image-size must be >= 96 x 96'),
    (['--peak-tflops', '0'], '--peak-tflops must be > 0'),
    (['--timer', 'gpu'], "argument --timer: invalid choice: 'gpu'"),
    (['--gpu-step-time', '0.4'], '--gpu-step-time is for --data'),
    (['--data', '--gpu-step-time', 'x=1'], "unknown model key 'x'"),
    (['--models', 'cotap'], "argument --models: invalid choice: 'cotap'"),
])
def test_argument_errors_name_the_argument(tool, capsys, argv, message):
    with pytest.raises(SystemExit):
        tool.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason='the message of a machine without CUDA')
def test_cuda_without_a_gpu_is_an_argument_error(tool, capsys):
    with pytest.raises(SystemExit):
        tool.parse_args(['--device', 'cuda'])
    assert 'no CUDA device here' in capsys.readouterr().err


def test_reference_rows_are_always_measured(tool):
    assert tool.selected_keys(['cotap-b-coco', 'dino-s']) == ['mocov3-s', 'dino-s', 'mocov3-b',
                                                              'cotap-b-coco']


def test_late_state_fills_queues_bank_and_prototypes(tool):
    model = build_tiny_cotap(dict(embed_dims=16, num_layers=2, num_heads=2,
                                  feedforward_channels=32), prototypes_initialized=False)
    for q in (model.patch_queue, model.cls_queue, model.proto_bank):
        q.load_entries_(q.queue[:0])
    done = tool.steady_state(model)
    assert len(done) == 5, done  # 2 queues, 2 prototype flags, the bank
    for q in (model.patch_queue, model.cls_queue):
        assert len(q) == q.capacity
        torch.testing.assert_close(q.features().norm(dim=1), torch.ones(q.capacity))
    assert int(model.proto_bank.count) == len(model.proto_bank) == model.bank_size
    assert bool(model.neck.prototypes_initialized) and model.neck.initialized
    assert bool(model.teacher['neck'].prototypes_initialized)
    assert tool.steady_state(torch.nn.Linear(2, 2)) == []  # MoCo v3, DINO: nothing to set


def test_a_real_training_step_of_a_released_config(tool, tmp_path, monkeypatch):
    """CoTAP ViT-S/16 COCO (2 blocks), anchor + neighbour: the generated layout, the DINO-layout
    start checkpoint, then FLOPs, a timed step and the peak memory of the runner's iteration."""
    work = str(tmp_path)
    tool.prepare(work, ['cotap-s-coco'], num_images=8, image_size=(96, 128), depth=2)
    dino = torch.load(osp.join(work, 'checkpoints/dino_deitsmall16_pretrain.pth'),
                      weights_only=True)
    assert 'blocks.1.attn.qkv.weight' in dino and 'norm.weight' in dino  # DINO's own keys
    cfg = Config.fromfile(tool.config_path('cotap-s-coco', work))
    assert osp.isfile(osp.join(work, cfg.load_from))
    for _, path in tool.neighbour_files(cfg.train_dataloader.dataset):
        assert osp.isfile(osp.join(work, path))
    assert osp.isfile(osp.join(work, 'data/coco/train2017/000000000000.jpg'))
    monkeypatch.chdir(work)
    r = tool.measure_steps(dict(key='cotap-s-coco', work_dir=work, device='cpu', amp='off',
                                warmup=1, steps=1, threads=None, num_workers=0, depth=2,
                                images_per_step=2, state='start', timer='cpu'))
    assert r['images_per_index'] == 2 and r['times'] == r['cpu_times'] and r['times'][0] > 0
    assert len(r['wall_times']) == 1 and r['wall_times'][0] > 0
    assert r['flops'] > 1e10 and r['peak_bytes'] > 2**20  # 2 ViT-S blocks on 2 x 8 crops
    assert FIVE_TERMS <= set(r['losses']), r['losses']
    assert r['steady_state'] == [] and 'syncs' not in r  # --state start; no CUDA
    assert json.loads(json.dumps(r)) == r  # what the worker prints for the parent


def test_data_mode_measures_the_pipeline_alone(tool, tmp_path, capsys):
    work = str(tmp_path / 'bench')
    out = tool.main(['--data', '--models', 'cotap-s-coco', '--gpu-step-time', '0.5',
                     '--images-per-step', '2', '--data-batches', '1', '--num-images', '8',
                     '--image-size', '96', '96', '--work-dir', work])
    assert out['steps'] == [] and [r['key'] for r in out['data']] == ['mocov3-s', 'cotap-s-coco']
    assert [r['images_per_index'] for r in out['data']] == [1, 2]
    assert all(r['images_per_s_core'] > 0 for r in out['data'])
    assert 'GFLOP' not in out['report'] and '| cores/GPU |' in out['report']
    assert not osp.exists(osp.join(work, 'checkpoints'))  # no model, no start checkpoint
    assert out['report'] in capsys.readouterr().out


def test_a_failed_worker_becomes_a_table_row(tool, tmp_path):
    """The step runs in a subprocess; one that fails (here: DINO's config was never written)
    gives a row with the error instead of ending the run."""
    r = tool.run_worker(dict(key='dino-s', work_dir=str(tmp_path), device='cpu', amp='off',
                             warmup=1, steps=1, threads=1, num_workers=0, depth=2,
                             images_per_step=4, state='start'))
    assert r['key'] == 'dino-s' and 'FileNotFoundError' in r['error']
    assert 'failed: FileNotFoundError' in tool.step_table([r], None)

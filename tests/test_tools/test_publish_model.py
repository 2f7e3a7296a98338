"""tools/model_converters/publish_model.py: slim backbone-only checkpoints from training checkpoints."""
import hashlib
import os
import os.path as osp
from functools import partial

import pytest
import torch
from mmengine.logging import HistoryBuffer

from cotap_mm.models.backbones.cotap_vit import CoTAPViT
from cotap_mm.utils.checkpoint import to_plain
from cotap_test_helpers.tool_runs import load_tool as load_tool_file
from cotap_test_helpers.tool_runs import run_tool_cli

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
TOOL = osp.join(ROOT, 'tools', 'model_converters', 'publish_model.py')
TINY = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)


load_tool = partial(load_tool_file, 'tools/model_converters/publish_model.py', 'publish_model')
run_cli = partial(run_tool_cli, TOOL)


@pytest.fixture(scope='module')
def cotap_model():
    """A tiny real CoTAP model whose teacher differs from the student (as after EMA updates)."""
    from mmpretrain.registry import MODELS
    import cotap_mm  # noqa: F401  (registers the modules)
    head = dict(type='DINOProjectionHead', hidden_channels=16, bottleneck_channels=8, num_prototypes=8)
    model = MODELS.build(dict(
        type='CoTAP',
        backbone=dict(type='CoTAPViT', arch=TINY, img_size=32, patch_size=8),
        neck=dict(type='ObjectPrototypeNeck', num_prototypes=4, kernel_size=3),
        patch_head=head, cls_head=head,
        cotap_loss=dict(type='ContinuousAPLoss'), cls_loss=dict(type='DINOClsLoss'),
        proto_loss=dict(type='PrototypeEntropyLoss'), bank_size=8, bank_samples_per_step=2))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    model.teacher_initialized.fill_(True)
    return model


def write_training_checkpoint(model, path, plain=True):
    hub = {'log_scalars': {'train/loss': HistoryBuffer([1.0, 0.5], [1, 1])}}
    ckpt = {
        'meta': {'epoch': 3, 'iter': 30, 'seed': 0, 'cfg': "model = dict(type='CoTAP')",
                 'mmengine_version': '0.10.7', 'dataset_meta': None},
        'state_dict': model.state_dict(),
        'optimizer': {'state': {0: {'exp_avg': torch.ones(3)}}, 'param_groups': [{'lr': 0.1}]},
        'message_hub': to_plain(hub) if plain else hub,  # what PlainCheckpointHook writes
    }
    torch.save(ckpt, path)
    return ckpt


def test_cli_publishes_teacher_backbone(tmp_path, cotap_model):
    src = tmp_path / 'epoch_3.pth'
    write_training_checkpoint(cotap_model, src)
    proc = run_cli(src, tmp_path / 'pub' / 'cotap_tiny.pth')
    assert proc.returncode == 0, proc.stderr
    final = proc.stdout.strip().splitlines()[-1]
    digest = hashlib.sha256(open(final, 'rb').read()).hexdigest()
    assert final == str(tmp_path / 'pub' / f'cotap_tiny-{digest[:8]}.pth')
    assert sorted(os.listdir(tmp_path / 'pub')) == [osp.basename(final)]  # no temp file left

    out = torch.load(final, map_location='cpu', weights_only=True)
    assert set(out) == {'state_dict', 'meta'}
    teacher = cotap_model.teacher['backbone'].state_dict()
    assert set(out['state_dict']) == {'backbone.' + k for k in teacher}
    for k, v in teacher.items():
        assert torch.equal(out['state_dict']['backbone.' + k], v), k
    # the student differs, so the teacher really was chosen
    assert not torch.equal(out['state_dict']['backbone.pos_embed'], cotap_model.backbone.pos_embed)
    meta = out['meta']
    assert meta['epoch'] == 3 and meta['iter'] == 30 and 'CoTAP' in meta['cfg']
    assert meta['publish']['source_prefix'] == 'teacher.backbone.'
    assert meta['arch']['embed_dims'] == 32 and meta['arch']['patch_size'] == 8
    assert 'optimizer' not in out and 'message_hub' not in out

    # downstream path: mmseg config with the mmpretrain backbone and a Pretrained init_cfg
    from mmseg.registry import MODELS as SEG_MODELS
    seg_backbone = SEG_MODELS.build(dict(
        type='mmpretrain.CoTAPViT', arch=TINY, img_size=32, patch_size=8, out_type='featmap',
        init_cfg=dict(type='Pretrained', checkpoint=final, prefix='backbone.')))
    seg_backbone.init_weights()
    for k, v in seg_backbone.state_dict().items():
        torch.testing.assert_close(v, teacher[k], rtol=0, atol=0, msg=k)
    x = torch.randn(1, 3, 32, 32)
    seg_backbone.eval()
    ref = CoTAPViT(arch=TINY, img_size=32, patch_size=8, out_type='featmap')
    ref.load_state_dict(teacher)
    ref.eval()  # mmpretrain's BaseBackbone.train() returns None: no chaining
    with torch.no_grad():
        torch.testing.assert_close(seg_backbone(x)[-1], ref(x)[-1])


def test_student_prefix_and_half(tmp_path, cotap_model):
    tool = load_tool()
    src = tmp_path / 'epoch_3.pth'
    write_training_checkpoint(cotap_model, src)
    full = tool.main([str(src), str(tmp_path / 'full.pth'), '--keep-prefix', 'backbone.'])
    half = tool.main([str(src), str(tmp_path / 'half.pth'), '--keep-prefix', 'backbone.', '--half'])
    assert osp.basename(full).startswith('full-') and osp.basename(half).startswith('half-')
    assert hashlib.sha256(open(half, 'rb').read()).hexdigest()[:8] == half[-12:-4]
    sd_full = torch.load(full, weights_only=True)['state_dict']
    sd_half = torch.load(half, weights_only=True)['state_dict']
    student = cotap_model.backbone.state_dict()
    assert set(sd_half) == {'backbone.' + k for k in student}
    for k, v in student.items():
        assert torch.equal(sd_full['backbone.' + k], v)
        assert sd_half['backbone.' + k].dtype == torch.float16
        assert torch.equal(sd_half['backbone.' + k], v.half())
    assert osp.getsize(half) < 0.75 * osp.getsize(full)
    # an fp16 checkpoint loads into the fp32 backbone through Pretrained init
    m = CoTAPViT(arch=TINY, img_size=32, patch_size=8,
                 init_cfg=dict(type='Pretrained', checkpoint=half, prefix='backbone.'))
    m.init_weights()
    assert m.pos_embed.dtype == torch.float32
    torch.testing.assert_close(m.pos_embed, student['pos_embed'].half().float(), rtol=0, atol=0)


def test_slim_checkpoint_functions():
    tool = load_tool()
    w = torch.randn(4)
    # no teacher: falls back to backbone.*; custom keep/out prefixes; bare state dicts
    out = tool.slim_checkpoint({'state_dict': {'backbone.a': w, 'head.b': torch.ones(1)}})
    assert list(out['state_dict']) == ['backbone.a']
    assert out['meta']['publish']['source_prefix'] == 'backbone.'
    out = tool.slim_checkpoint({'model.enc.a': w, 'model.dec.b': w}, keep_prefix='model.enc.', out_prefix='')
    assert list(out['state_dict']) == ['a'] and 'arch' not in out['meta']
    assert tool.final_path('/x/y.pth', 'abcdef0123') == '/x/y-abcdef01.pth'
    assert tool.final_path('/x/y', 'abcdef0123') == '/x/y-abcdef01.pth'
    with pytest.raises(ValueError, match=r"no backbone keys found.*'head\.fc \(1\)'.*'neck\.proj \(2\)'"):
        tool.slim_checkpoint(
            {'state_dict': {'head.fc.weight': w, 'neck.proj.weight': w, 'neck.proj.bias': w}})
    with pytest.raises(ValueError, match=r"no tensors with prefix 'ema\.'.*backbone"):
        tool.slim_checkpoint({'state_dict': {'backbone.a': w}}, keep_prefix='ema.')
    with pytest.raises(ValueError, match="no 'state_dict'"):
        tool.slim_checkpoint({'meta': {}, 'optimizer': {}})
    with pytest.raises(ValueError, match='expected a checkpoint dict'):
        tool.slim_checkpoint([w])


def test_cli_errors_and_unsafe_checkpoint(tmp_path, cotap_model):
    proc = run_cli(tmp_path / 'missing.pth', tmp_path / 'o.pth')
    assert proc.returncode != 0 and 'missing.pth can not be found' in proc.stderr
    assert 'Traceback' not in proc.stderr

    tool = load_tool()
    src = tmp_path / 'mmengine_style.pth'
    write_training_checkpoint(cotap_model, src, plain=False)  # raw HistoryBuffer: not weights_only-safe
    with pytest.raises(Exception, match='HistoryBuffer'):
        tool.main([str(src), str(tmp_path / 'o.pth')])
    final = tool.main([str(src), str(tmp_path / 'o.pth'), '--trust-checkpoint'])
    out = torch.load(final, weights_only=True)  # the published file itself is safe
    assert torch.equal(out['state_dict']['backbone.cls_token'], cotap_model.teacher['backbone'].cls_token)


# ----------------------------------------------------------------------------- --with-neck
def _filtered_ready(model):
    """Copy of the fixture model with k-means-initialised prototypes in both branches."""
    import copy
    m = copy.deepcopy(model)
    m.neck.mark_initialized()
    m.teacher['neck'].mark_initialized()
    return m


@pytest.mark.parametrize('branch', ['teacher', 'student'])
def test_with_neck_publishes_the_filter_of_the_branch(tmp_path, cotap_model, branch):
    from cotap_mm.models.backbones import CoTAPFilteredViT
    model = _filtered_ready(cotap_model)
    src = tmp_path / 'epoch_3.pth'
    write_training_checkpoint(model, src)
    if branch == 'teacher':  # the default branch, through the command line
        proc = run_cli(src, tmp_path / 'filtered.pth', '--with-neck')
        assert proc.returncode == 0, proc.stderr
        final = proc.stdout.strip().splitlines()[-1]
    else:  # in-process (saves a subprocess start)
        final = load_tool().main([str(src), str(tmp_path / 'filtered.pth'), '--with-neck',
                                  '--keep-prefix', 'backbone.'])
    out = torch.load(final, weights_only=True)
    mods = model.teacher if branch == 'teacher' else model.student
    expected = {f'{part}.{k}': v for part in ('backbone', 'neck')
                for k, v in mods[part].state_dict().items()}
    assert set(out['state_dict']) == set(expected)
    for k, v in expected.items():
        assert torch.equal(out['state_dict'][k], v), k
    pub = out['meta']['publish']
    assert pub['neck_source_prefix'] == ('teacher.neck.' if branch == 'teacher' else 'neck.')
    assert pub['num_neck_tensors'] == len(mods['neck'].state_dict())
    assert out['meta']['arch']['embed_dims'] == 32  # inferred from the backbone tensors only
    # the published file feeds the paper-protocol backbone with prefix='' and gives the branch's features
    bb = CoTAPFilteredViT(arch=TINY, img_size=32, patch_size=8, num_prototypes=4,
                          init_cfg=dict(type='Pretrained', checkpoint=final, prefix=''))
    bb.init_weights()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens, hw = mods['backbone'].forward_pre_last(x)
        _, ref = mods['neck'](tokens, hw, mods['backbone'].last_block)
        torch.testing.assert_close(bb(x)[0], ref.transpose(1, 2).reshape(2, 64, 4, 4), rtol=0,
                                   atol=1e-6)


def test_with_neck_errors_and_default_unchanged(cotap_model):
    tool = load_tool()
    sd = cotap_model.state_dict()
    # default (no --with-neck): still backbone-only
    assert all(k.startswith('backbone.') for k in tool.slim_checkpoint({'state_dict': sd})['state_dict'])
    no_neck = {k: v for k, v in sd.items() if '.neck.' not in f'.{k}'}
    with pytest.raises(ValueError, match=r"no tensors with prefix 'teacher\.neck\.'"):
        tool.slim_checkpoint({'state_dict': no_neck}, with_neck=True)
    with pytest.raises(ValueError, match=r"ending in 'backbone\.'.*'teacher\.'"):
        tool.slim_checkpoint({'state_dict': sd}, keep_prefix='teacher.', with_neck=True)
    assert tool.neck_prefix_for('teacher.backbone.') == 'teacher.neck.'
    assert tool.neck_prefix_for('backbone.') == 'neck.'
    half = tool.slim_checkpoint({'state_dict': sd}, with_neck=True, half=True)['state_dict']
    assert half['neck.prototypes'].dtype == torch.float16
    assert half['neck.prototypes_initialized'].dtype == torch.bool

"""vit2cotap.py --src-format cotap-release: released CoTAP checkpoints -> CoTAP / CoTAPFilteredViT.

The source is the independent port of the released ViT (``cotap_test_helpers.released_cotap``) with
random weights, saved in the release's layouts; the converted modules must give the released 2C
features and head scores on the same images.
"""
import os.path as osp
from functools import partial
from typing import Dict, Tuple

import pytest
import torch

from cotap_mm.models.necks.object_prototype_neck import filtered_forward
from mmengine.config import Config

from cotap_mm.models.backbones import CoTAPFilteredViT
from cotap_mm.models.backbones.cotap_release_mapping import (convert_release_branch,
                                                             split_release_checkpoint)
from cotap_test_helpers.cotap_checkpoint import DEMO_CONFIG
from cotap_test_helpers.released_cotap import ReleasedViT, released_training_checkpoint
from cotap_test_helpers.tool_runs import load_tool as load_tool_file
from cotap_test_helpers.tool_runs import run_tool_cli

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
TOOL = osp.join(ROOT, 'tools', 'model_converters', 'vit2cotap.py')
load_tool = partial(load_tool_file, 'tools/model_converters/vit2cotap.py', 'vit2cotap_release')
RELEASE = ['--src-format', 'cotap-release', '--num-heads', '2']
TOL = dict(atol=1e-5, rtol=1e-5)
# buffers of our CoTAP that the release does not save (left to the model's initial values)
NOT_IN_RELEASE = {'loss_iter', 'proto_bank.queue', 'proto_bank.ptr', 'proto_bank.count',
                  'cls_loss.center',
                  'cls_loss.num_updates', 'patch_queue.queue', 'patch_queue.ptr', 'patch_queue.count',
                  'cls_queue.queue', 'cls_queue.ptr', 'cls_queue.count'}


class AttributeDictLike(dict):  # stands for Lightning's AttributeDict in 'hyper_parameters'
    pass


class ConfigLike:  # stands for an OmegaConf DictConfig; must never be rebuilt by the importer

    def __init__(self) -> None:
        self.content = {'model': {'vit_type': 'depth'}}

    def __setstate__(self, state: dict) -> None:
        raise AssertionError('the importer ran the code of a pickled class')


def released(seed: int, layer_scale: float = 0.0, **kwargs) -> ReleasedViT:
    """A random released-layout ViT (default tiny sizes) with non-trivial norms and biases."""
    torch.manual_seed(seed)
    vit = ReleasedViT(layer_scale=layer_scale, **kwargs)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    return vit.eval()


def images(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def reference(vit: ReleasedViT, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    with torch.no_grad():
        cls, patches = vit.get_last_feature(x)
        return dict(cls=cls, patch=patches, **{f'{k}_head': v
                                               for k, v in vit.head_outputs(x).items()})


def build_cotap(meta: dict) -> torch.nn.Module:
    """CoTAP from the demo config with the printed kwargs (tiny queues and bank)."""
    import cotap_mm  # noqa: F401
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(DEMO_CONFIG).model
    for name, kwargs in meta['cotap_model_kwargs'].items():
        cfg[name] = dict(kwargs)
    cfg.update(patch_queue=dict(size=16, max_per_step=4), cls_queue=dict(size=16, max_per_step=4),
               bank_size=8, bank_samples_per_step=2, pool_scales=(2, 4))
    return MODELS.build(cfg).eval()


def cotap_outputs(model: torch.nn.Module, branch: str, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    mods = model.student if branch == 'student' else model.teacher
    with torch.no_grad():
        _, (h, w), cls, patches = filtered_forward(mods['backbone'], mods['neck'], x)
        B, N, D = patches.shape
        return dict(cls=cls, patch=patches.transpose(1, 2).reshape(B, D, h, w),
                    patch_head=mods['patch_head'](patches), cls_head=mods['cls_head'](cls))


def filtered_outputs(model: CoTAPFilteredViT, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        tokens, hw = model.backbone.forward_pre_last(x)
        cls, _ = model.neck(tokens, hw, model.backbone.last_block)
        return cls, model(x)[0]


def assert_same(ours: Dict[str, torch.Tensor], ref: Dict[str, torch.Tensor]) -> None:
    for key, val in ref.items():
        assert ours[key].shape == val.shape, key
        torch.testing.assert_close(ours[key], val, **TOL, msg=lambda m: f'{key}: {m}')


def save_release(tmp_path, name: str, student: ReleasedViT, teacher=None, **extra) -> str:
    path = str(tmp_path / name)
    torch.save(released_training_checkpoint(student.state_dict(),
                                            None if teacher is None else teacher.state_dict(),
                                            extra or None), path)
    return path


@pytest.mark.parametrize('layer_scale', [0.0, 0.3])
def test_lightning_checkpoint_to_algorithm_matches_release(tmp_path, layer_scale):
    """Student and teacher of a release .ckpt -> CoTAP: 2C features and head scores of both branches
    equal the released ones; strict load apart from the buffers the release does not save."""
    from mmengine.runner import load_checkpoint
    stu, tea = released(0, layer_scale), released(1, layer_scale)
    src = save_release(tmp_path, 'dino+cotap.ckpt', stu, tea,
                       **{'loss_fn.loss_fn.0.dummy': torch.zeros(2)})
    dst = str(tmp_path / 'cotap_release.pth')
    out = load_tool().main([src, dst, *RELEASE])
    meta = out['meta']
    assert meta['target'] == 'algorithm' and meta['layout'] == 'lightning'
    assert meta['branches'] == {'student': 'net.model.*', 'teacher': 'net_teacher.model.*'}
    assert meta['unused_branches'] == [] and meta['placeholder_globals'] == []
    # the filter norms every released block builds (block 0 here) and training-only state: dropped
    assert meta['dropped_keys'] == sorted(
        ['loss_fn.loss_fn.0.dummy'] + [f'{p}blocks.0.{n}.{w}' for p in ('net.model.', 'net_teacher.model.')
                                       for n in ('norm_in', 'norm_out_cls', 'norm_out_patch')
                                       for w in ('bias', 'weight')])
    kw = meta['cotap_model_kwargs']
    assert kw['backbone']['arch'] == dict(embed_dims=32, num_layers=2, num_heads=2,
                                          feedforward_channels=64)
    assert kw['backbone']['final_norm'] is False and kw['backbone']['patch_size'] == 16
    assert (kw['backbone']['layer_scale_init_value'] > 0) == (layer_scale > 0)
    assert kw['neck'] == dict(type='ObjectPrototypeNeck', num_prototypes=8, kernel_size=3)
    assert kw['patch_head'] == dict(type='DINOProjectionHead', hidden_channels=48,
                                    bottleneck_channels=16, num_prototypes=24, num_layers=3,
                                    norm_last_layer=True, last_mlp_bias=False)
    assert kw['cls_head']['num_prototypes'] == 40

    model = build_cotap(meta)
    sd = torch.load(dst, map_location='cpu', weights_only=True)['state_dict']
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert unexpected == [] and set(missing) == NOT_IN_RELEASE
    assert not set(missing) & {n for n, _ in model.named_parameters()}  # buffers only
    fresh = build_cotap(meta)
    load_checkpoint(fresh, dst, map_location='cpu')  # the load_from path (mmengine, weights_only)
    fresh.load_state_dict({**fresh.state_dict(), **sd}, strict=True)
    assert bool(fresh.teacher_initialized) and bool(fresh.neck.prototypes_initialized)
    assert bool(fresh.teacher['neck'].prototypes_initialized)

    x = images()
    assert_same(cotap_outputs(fresh, 'student', x), reference(stu, x))
    assert_same(cotap_outputs(fresh, 'teacher', x), reference(tea, x))
    with torch.no_grad():
        torch.testing.assert_close(fresh.extract_feat(x), reference(stu, x)['patch'], **TOL)


def test_lightning_checkpoint_to_filtered_vit_student_or_teacher(tmp_path):
    """--target filtered: backbone.* + neck.* of the student (default) or the teacher, loaded by
    CoTAPFilteredViT with prefix ''; 2C patch and CLS features equal the released ones."""
    stu, tea = released(0), released(1)
    src = save_release(tmp_path, 'dino+cotap.ckpt', stu, tea)
    x = images()
    ref = {'student': reference(stu, x), 'teacher': reference(tea, x)}
    assert not torch.allclose(ref['student']['patch'], ref['teacher']['patch'], atol=1e-2)
    tool = load_tool()
    for branch in ('student', 'teacher'):
        dst = str(tmp_path / f'filtered_{branch}.pth')
        extra = [] if branch == 'student' else ['--branch', 'teacher']
        meta = tool.main([src, dst, *RELEASE, '--target', 'filtered', *extra])['meta']
        assert meta['branches'] == {'filtered': ('net.model.*' if branch == 'student' else
                                                 'net_teacher.model.*')}
        assert any(k.endswith('projection_heads.1.last_layer.weight_v') for k in meta['dropped_keys'])
        other = 'net_teacher.model.*' if branch == 'student' else 'net.model.*'
        assert meta['unused_branches'] == [other]
        keys = torch.load(dst, weights_only=True)['state_dict'].keys()
        assert {k.split('.')[0] for k in keys} == {'backbone', 'neck'}
        model = CoTAPFilteredViT(**meta['filtered_vit_kwargs'],
                                 init_cfg=dict(type='Pretrained', checkpoint=dst, prefix=''))
        model.init_weights()
        cls, patch = filtered_outputs(model, x)
        torch.testing.assert_close(patch, ref[branch]['patch'], **TOL)
        torch.testing.assert_close(cls, ref[branch]['cls'], **TOL)


def test_single_vit_layouts_and_branch_option(tmp_path):
    """A bare ViT state dict or a DinoFeaturizer's (model.*) goes to student and teacher alike;
    --branch student puts a .ckpt's student in both places (also when the teacher is absent)."""
    stu, tea = released(0), released(1)
    x = images()
    tool = load_tool()
    for name, sd in (('vit.pth', stu.state_dict()),
                     ('featurizer.pth', {'model.' + k: v for k, v in stu.state_dict().items()})):
        torch.save(sd, tmp_path / name)
        out = tool.main([str(tmp_path / name), str(tmp_path / ('o_' + name)), *RELEASE])
        assert out['meta']['branches'] == {'student': 'the single ViT', 'teacher': 'the single ViT'}
        model = build_cotap(out['meta'])
        model.load_state_dict(out['state_dict'], strict=False)
        for branch in ('student', 'teacher'):
            assert_same(cotap_outputs(model, branch, x), reference(stu, x))

    src = save_release(tmp_path, 'two.ckpt', stu, tea)
    out = tool.main([src, str(tmp_path / 'o.pth'), *RELEASE, '--branch', 'teacher'])
    model = build_cotap(out['meta'])
    model.load_state_dict(out['state_dict'], strict=False)
    assert_same(cotap_outputs(model, 'student', x), reference(tea, x))

    only_student = save_release(tmp_path, 'student_only.ckpt', stu)
    with pytest.raises(ValueError, match=r'no net_teacher\.model\.\* tensors.*--branch student'):
        tool.main([only_student, str(tmp_path / 'o.pth'), *RELEASE])
    with pytest.raises(ValueError, match=r'no net_teacher\.model\.\* tensors'):
        tool.main([only_student, str(tmp_path / 'o.pth'), *RELEASE, '--target', 'filtered',
                   '--branch', 'teacher'])
    tool.main([only_student, str(tmp_path / 'o.pth'), *RELEASE, '--branch', 'student'])


def test_add_final_norm_for_default_configs(tmp_path):
    """--add-final-norm writes a fresh ln1 so final_norm=True models load strictly; the filtered
    features do not read it."""
    stu = released(0)
    src = save_release(tmp_path, 'r.ckpt', stu, released(1))
    dst = str(tmp_path / 'f.pth')
    meta = load_tool().main([src, dst, *RELEASE, '--target', 'filtered', '--add-final-norm'])['meta']
    assert meta['initialised_keys'] == ['backbone.ln1.weight', 'backbone.ln1.bias']
    kwargs = meta['filtered_vit_kwargs']
    assert kwargs['backbone_cfg']['final_norm'] is True
    model = CoTAPFilteredViT(**kwargs, init_cfg=dict(type='Pretrained', checkpoint=dst, prefix=''))
    model.init_weights()
    torch.testing.assert_close(model.backbone.ln1.weight, torch.ones(32))
    x = images()
    torch.testing.assert_close(filtered_outputs(model, x)[1], reference(stu, x)['patch'], **TOL)
    # without the flag, the same config (final_norm=True) misses ln1
    dst2 = str(tmp_path / 'f2.pth')
    load_tool().main([src, dst2, *RELEASE, '--target', 'filtered'])
    bad = CoTAPFilteredViT(**kwargs, init_cfg=dict(type='Pretrained', checkpoint=dst2, prefix=''))
    with pytest.raises(RuntimeError, match='ln1'):
        bad.init_weights()


def test_pickled_hyper_parameters_read_as_placeholders(tmp_path):
    """Lightning pickles its config in hyper_parameters: read with weights_only=True and inert
    placeholders (the classes' code never runs), names recorded; tensors converted as usual."""
    stu = released(0)
    ckpt = released_training_checkpoint(stu.state_dict(), released(1).state_dict())
    ckpt['hyper_parameters'] = AttributeDictLike(cfg=ConfigLike(), lr=1e-4)
    src = str(tmp_path / 'pickled.ckpt')
    torch.save(ckpt, src)
    with pytest.raises(Exception):
        torch.load(src, weights_only=True)
    out = load_tool().main([src, str(tmp_path / 'o.pth'), *RELEASE])
    names = out['meta']['placeholder_globals']
    assert len(names) == 2 and {n.rsplit('.', 1)[1] for n in names} == {'AttributeDictLike',
                                                                        'ConfigLike'}
    model = build_cotap(out['meta'])
    model.load_state_dict(out['state_dict'], strict=False)
    x = images()
    assert_same(cotap_outputs(model, 'student', x), reference(stu, x))
    # the output itself is plain data
    torch.load(tmp_path / 'o.pth', weights_only=True)


def test_cli_prints_constructor_kwargs(tmp_path):
    src = save_release(tmp_path, 'r.ckpt', released(0), released(1))
    proc = run_tool_cli(TOOL, src, tmp_path / 'o.pth', *RELEASE)
    assert proc.returncode == 0, proc.stderr
    assert 'CoTAP model kwargs' in proc.stdout and 'CoTAPFilteredViT kwargs' in proc.stdout
    assert "'num_prototypes': 8" in proc.stdout and 'final_norm=False' in proc.stdout


def _vit_sd(**kwargs) -> Dict[str, torch.Tensor]:
    return dict(released(0, **kwargs).state_dict())


def test_bad_inputs_name_keys(tmp_path):
    tool = load_tool()
    dst = str(tmp_path / 'o.pth')

    def run(sd, *extra, layout='vit'):
        src = str(tmp_path / 'src.pth')
        torch.save(released_training_checkpoint(sd, sd) if layout == 'lightning' else sd, src)
        return tool.main([src, dst, *RELEASE, *extra])

    # a DINO checkpoint (no filter, no heads, final norm): refused, naming the filter keys
    dino = {k: v for k, v in _vit_sd(filter_norms_in_every_block=False).items()
            if not k.startswith(('kernel', 'projection_heads')) and '.norm_' not in k}
    dino.update({'norm.weight': torch.ones(32), 'norm.bias': torch.zeros(32)})
    with pytest.raises(ValueError, match=r"filter keys \['blocks.1.norm_in.weight'.*'kernel'\]"):
        run(dino)
    with pytest.raises(ValueError, match='filter keys'):
        run(dino, '--target', 'filtered', layout='lightning')

    # missing head: the algorithm needs it, the filtered target does not
    sd = {k: v for k, v in _vit_sd().items() if not k.startswith('projection_heads.1.')}
    with pytest.raises(ValueError, match=r'projection_heads\.1\.\* \(the cls_head\) is missing'):
        run(sd)
    assert run(sd, '--target', 'filtered')['meta']['target'] == 'filtered'
    sd = _vit_sd()
    del sd['projection_heads.0.last_layer.weight_g']
    with pytest.raises(ValueError, match=r'projection_heads\.0\.last_layer\.weight_g is missing'):
        run(sd)
    sd = _vit_sd()
    sd['projection_heads.0.last_layer.weight_g'] = torch.full((24, 1), 1.5)
    with pytest.raises(ValueError, match=r'projection_heads\.0\.last_layer\.weight_g deviates'):
        run(sd)

    # wrong kernel shapes
    for shape in [(8, 16, 3, 3), (8, 32, 2, 2), (8, 32, 3)]:
        sd = _vit_sd()
        sd['kernel'] = torch.randn(*shape)
        with pytest.raises(ValueError, match=r'kernel has shape .*expected the filter prototypes '
                           r'\[M, C = 32, K, K\]'):
            run(sd)

    # unknown keys: refused with their names, dropped (listed) with --non-strict
    sd = _vit_sd()
    sd['blocks.0.mystery.weight'] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"not released CoTAP ViT keys: \['blocks.0.mystery.weight'\]"):
        run(sd)
    assert 'blocks.0.mystery.weight' in run(sd, '--non-strict')['meta']['dropped_keys']
    ckpt = released_training_checkpoint(_vit_sd(), _vit_sd(), {'net.v0.0': torch.ones(1)})
    torch.save(ckpt, tmp_path / 'extra.ckpt')
    with pytest.raises(ValueError, match=r"\['net.v0.0'\]"):
        tool.main([str(tmp_path / 'extra.ckpt'), dst, *RELEASE])

    # containers the release does not write (prefix teacher., DINO-style nested dicts)
    for bad in ({'teacher.' + k: v for k, v in _vit_sd().items()},
                {'student': _vit_sd(), 'teacher': _vit_sd()}):
        torch.save(bad, tmp_path / 'bad.pth')
        with pytest.raises(ValueError, match='no released CoTAP key layout|expected a Lightning'):
            tool.main([str(tmp_path / 'bad.pth'), dst, *RELEASE])

    # the default src-format (auto) does not guess a release checkpoint; it points to the format
    torch.save(released_training_checkpoint(_vit_sd(), _vit_sd()), tmp_path / 'r.ckpt')
    with pytest.raises(ValueError, match='use --src-format cotap-release'):
        tool.main([str(tmp_path / 'r.ckpt'), dst])

    # options of the other formats
    with pytest.raises(ValueError, match='--prefix does not apply'):
        tool.main([str(tmp_path / 'src.pth'), dst, *RELEASE, '--prefix', 'x.'])
    with pytest.raises(ValueError, match='--target only applies'):
        tool.main([str(tmp_path / 'src.pth'), dst, '--target', 'filtered'])


def test_pure_functions():
    """split_release_checkpoint / convert_release_branch without files."""
    sd = _vit_sd()
    layout, branches, dropped = split_release_checkpoint(
        released_training_checkpoint(sd, sd, {'tester.0.w': torch.ones(1)}))
    assert layout == 'lightning' and set(branches) == {'student', 'teacher'}
    assert dropped == ['tester.0.w']
    parts, info, dropped = convert_release_branch(branches['student'])
    assert set(parts) == {'backbone', 'neck', 'patch_head', 'cls_head'}
    assert parts['neck']['prototypes'] is sd['kernel']
    assert bool(parts['neck']['prototypes_initialized'])
    assert parts['backbone']['layers.1.attn.qkv.weight'] is sd['blocks.1.attn.qkv.weight']
    assert parts['neck']['norm_out_cls.bias'] is sd['blocks.1.norm_out_cls.bias']
    assert set(parts['patch_head']) == {'mlp.0.weight', 'mlp.0.bias', 'mlp.2.weight', 'mlp.2.bias',
                                        'mlp.4.weight', 'weight_v'}
    assert dropped == sorted(f'blocks.0.{n}.{w}' for n in ('norm_in', 'norm_out_patch', 'norm_out_cls')
                             for w in ('weight', 'bias'))
    assert info['num_prototypes'] == 8 and info['kernel_size'] == 3
    assert info['patch_head']['weight_g_max_abs_dev'] == 0.0
    parts, _, dropped = convert_release_branch(sd, with_heads=False)
    assert set(parts) == {'backbone', 'neck'} and 'projection_heads.0.last_layer.weight_g' in dropped

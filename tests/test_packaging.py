"""The package as pip builds it (setup.py, MANIFEST.in): a copy of the checkout is installed with
``pip install --target`` (a real, non-editable install), and OpenMMLab's tools are run against it
from a project folder outside the repository: ``mim search``, ``mim train``, ``mim test``,
``_base_ = 'cotap_mm::...'`` and mmpretrain's ``list_models``."""
import glob
import importlib.util
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

from cotap_test_helpers.seg_data import shrink_seg_config, write_pretrain_checkpoint, write_voc_aug
from cotap_test_helpers.tiny_runs import REPO_ROOT
from cotap_test_helpers.tool_runs import load_tool

SHIPPED = ('setup.py', 'MANIFEST.in', 'README.md', 'model-index.yml')
SHIPPED_DIRS = ('requirements', 'cotap_mm', 'configs', 'tools')
DEMO = 'cotap_vit-tiny-p8_1xb8-demo_synthetic'
MIM = osp.join(osp.dirname(sys.executable), 'mim')


def _setup_module():
    spec = importlib.util.spec_from_file_location('_cotap_setup', osp.join(REPO_ROOT, 'setup.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # main() runs only as a script
    return mod


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """``pip install --target SITE`` of a clean copy of the checkout; returns SITE."""
    root = tmp_path_factory.mktemp('pkg')
    src, site = root / 'src', root / 'site'
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '.mim', '*.egg-info')
    src.mkdir()
    for name in SHIPPED:
        shutil.copy(osp.join(REPO_ROOT, name), src)
    for name in SHIPPED_DIRS:
        shutil.copytree(osp.join(REPO_ROOT, name), src / name, ignore=ignore)
    proc = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps',
                           '--no-build-isolation', '--no-index', '--target', str(site), str(src)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return str(site)


@pytest.fixture(scope='module')
def project(tmp_path_factory):
    return tmp_path_factory.mktemp('my_project')


def _env(site):
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE')}
    env.update(PYTHONPATH=site, OMP_NUM_THREADS='1')
    return env


def _run(cmd, site, cwd, timeout=300):
    if cmd[0] == 'mim' and not osp.isfile(MIM):
        pytest.fail(f'{MIM} not found: openmim is a test requirement (pip install -e .[tests])')
    cmd = [MIM] + cmd[1:] if cmd[0] == 'mim' else cmd
    proc = subprocess.run(cmd, cwd=str(cwd), env=_env(site), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return proc.stdout


def test_mim_mode_follows_the_setup_command():
    setup = _setup_module()
    assert setup.mim_mode(['setup.py', 'editable_wheel', '--dist-dir', 'x']) == 'symlink'
    assert setup.mim_mode(['setup.py', 'develop']) == 'symlink'
    assert setup.mim_mode(['setup.py', 'bdist_wheel']) == 'copy'
    assert setup.mim_mode(['setup.py', 'egg_info']) == ''


def test_add_mim_extension_links_or_copies(tmp_path):
    setup = _setup_module()
    for name in ('configs/cotap', 'tools', 'cotap_mm'):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / 'configs/cotap/a.py').write_text('x = 1\n')
    (tmp_path / 'tools/train.py').write_text('')
    (tmp_path / 'model-index.yml').write_text('Import: []\n')
    mim = tmp_path / 'cotap_mm' / '.mim'
    setup.add_mim_extension('symlink', str(tmp_path))
    assert osp.islink(mim / 'configs') and os.readlink(mim / 'configs') == '../../configs'
    assert (mim / 'configs/cotap/a.py').read_text() == 'x = 1\n'
    setup.add_mim_extension('copy', str(tmp_path))  # replaces the links
    assert not osp.islink(mim / 'configs') and (mim / 'configs/cotap/a.py').is_file()
    assert not osp.islink(mim / 'model-index.yml')
    with pytest.raises(ValueError, match='mode'):
        setup.add_mim_extension('hardlink', str(tmp_path))
    os.remove(tmp_path / 'model-index.yml')
    with pytest.raises(FileNotFoundError, match='model-index.yml'):
        setup.add_mim_extension('copy', str(tmp_path))


def test_wheel_ships_configs_tools_and_index(installed):
    mim = osp.join(installed, 'cotap_mm', '.mim')
    assert osp.isfile(osp.join(mim, 'model-index.yml')) and not osp.islink(mim + '/configs')
    for path in glob.glob(osp.join(REPO_ROOT, 'configs', '**', '*.py'), recursive=True) + \
            glob.glob(osp.join(REPO_ROOT, 'configs', '*', 'metafile.yml')):
        rel = osp.relpath(path, REPO_ROOT)
        assert osp.isfile(osp.join(mim, rel)), f'{rel} is not in the built package'
    for tool in ('train.py', 'test.py', 'dist_train.sh'):
        assert osp.isfile(osp.join(mim, 'tools', tool))


def test_mim_search_lists_models_and_paper_numbers(installed, project):
    out = _run(['mim', 'search', 'cotap_mm'], installed, project)
    for name in ('cotap_vit-small-p16-dino_4xb28-240k_coco-in1k', DEMO,
                 'ddssl-ibot_vit-small-p16_8xb64-800e_coco', 'scfs_resnet50_8xb32-200e_in1k'):
        assert f'config id: {name}\n' in out
    one = _run(['mim', 'search', 'cotap_mm', '--config',
                'cotap_vit-base-p8-dino_8xb8-210k_coco-in1k'], installed, project)
    assert one.count('config id:') == 1
    assert 'linear_miou ' in one and ' 54.7' in one and ' 45.9' in one  # +CoTAP and its start
    assert ' 81.6' in one and ' 82.1' in one  # ImageNet k-NN and linear


def test_mim_train_finds_the_config_in_the_package(installed, project):
    work = project / 'work_demo'
    out = _run(['mim', 'train', 'cotap_mm', f'{DEMO}.py', '--work-dir', str(work),
                '--cfg-options', 'train_cfg.max_iters=2', 'default_hooks.logger.interval=1'],
               installed, project)
    found = osp.join(installed, 'cotap_mm', '.mim', 'configs', 'cotap', f'{DEMO}.py')
    assert f'will use {found} instead' in out
    assert osp.join(installed, 'cotap_mm', '.mim', 'tools', 'train.py') in out
    assert 'Training finished successfully' in out
    assert osp.isfile(work / 'iter_2.pth')
    state = torch.load(work / 'iter_2.pth', map_location='cpu', weights_only=True)['state_dict']
    assert 'neck.prototypes' in state


def test_mim_test_runs_the_package_test_tool(installed, project, tmp_path):
    """mim test on a shrunk mmseg linear probe: the metrics equal those of tools/test.py run
    in-process on the same checkpoint."""
    import cotap_mm  # noqa: F401
    from mmseg.registry import MODELS as SEG_MODELS
    from mmseg.utils import register_all_modules
    pretrain = str(tmp_path / 'pretrain.pth')
    write_pretrain_checkpoint(pretrain)
    write_voc_aug(str(tmp_path / 'voc'))
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs', 'benchmarks', 'mmseg',
                                   'linear_cotap-vit-s16_1xb128-782it_voc12aug-336x336.py'))
    cfg = shrink_seg_config(cfg, str(tmp_path / 'voc'), pretrain, str(tmp_path / 'work'))
    path = str(project / 'probe.py')
    cfg.dump(path)
    from mmengine.registry import DefaultScope
    register_all_modules(init_default_scope=False)
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmseg'):
        seg = SEG_MODELS.build(cfg.model)
    seg.init_weights()
    ckpt = str(project / 'probe.pth')
    torch.save({'state_dict': seg.state_dict()}, ckpt)
    out_json = str(project / 'metrics.json')
    out = _run(['mim', 'test', 'cotap_mm', path, '--checkpoint', ckpt, '--work-dir',
                str(project / 'work_test'), '--out', out_json], installed, project)
    assert osp.join(installed, 'cotap_mm', '.mim', 'tools', 'test.py') in out
    with open(out_json) as f:
        metrics = json.load(f)
    ref_json = str(tmp_path / 'ref.json')
    load_tool('tools/test.py').main([path, ckpt, '--work-dir', str(tmp_path / 'ref'),
                                     '--out', ref_json])
    with open(ref_json) as f:
        ref = json.load(f)
    assert 0 <= metrics['mIoU'] <= 100
    assert metrics == pytest.approx(ref)


def test_scope_and_model_index_of_the_installed_package(installed, project):
    (project / 'my_cotap.py').write_text(
        f"_base_ = 'cotap_mm::cotap/{DEMO}.py'\nmodel = dict(neck=dict(num_prototypes=8))\n")
    script = (
        'import os.path as osp, cotap_mm\n'
        'from mmengine.config import Config\n'
        'from mmengine.registry import MODELS, VISUALIZERS\n'
        'cfg = Config.fromfile("my_cotap.py")\n'
        'v = VISUALIZERS.build(dict(cfg.visualizer, name="x"))\n'
        'm = MODELS.build(cfg.model)\n'
        'from mmpretrain import list_models, get_model\n'
        'print("visualizer", type(v).__name__)\n'
        'print("package", osp.dirname(cotap_mm.__file__))\n'
        'print("built", type(m).__name__, m.neck.num_prototypes)\n'
        'print("models", ",".join(list_models("*cotap*")))\n'
        'print("config", get_model("scfs_vit-tiny-p8_1xb8-300it_synthetic")._config.filename)\n')
    out = _run([sys.executable, '-c', script], installed, project)
    lines = dict(line.split(' ', 1) for line in out.splitlines() if ' ' in line)
    assert lines['package'] == osp.join(installed, 'cotap_mm')
    assert lines['built'] == 'CoTAP 8'
    assert lines['visualizer'] == 'UniversalVisualizer'  # mmpretrain's, through scope cotap_mm
    assert f'{DEMO}' in lines['models'].split(',')
    assert lines['config'] == osp.join(installed, 'cotap_mm', '.mim', 'configs', 'scfs',
                                       'scfs_vit-tiny-p8_1xb8-300it_synthetic.py')

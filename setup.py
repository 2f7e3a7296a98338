"""cotap_mm: dense self-supervised learning (CoTAP, de-coupling/de-positioning, SCFS) for OpenMMLab.

torch/torchvision and mmcv (with compiled ops) are installed by ``tools/setup_env.sh``: mmcv 2.1.0
has to be built against the installed torch, which pip cannot express. They are still declared here
so that ``pip install -e .`` in an existing OpenMMLab environment checks them.
"""
import os
import os.path as osp
import shutil
import sys
from typing import List

from setuptools import find_packages, setup

ROOT = osp.dirname(osp.abspath(__file__))
# what OpenMMLab's tools look for in ``<package>/.mim``: ``mim train/test`` run ``.mim/tools/*.py``,
# ``mim search`` and mmpretrain's ModelHub read ``.mim/model-index.yml``, and mmengine resolves
# ``_base_ = 'cotap_mm::cotap/...'`` to ``.mim/configs/cotap/...``
MIM_FILES = ('configs', 'tools', 'model-index.yml')


def read_version() -> str:
    ns: dict = {}
    with open(osp.join(osp.dirname(__file__), 'cotap_mm', 'version.py')) as f:
        exec(f.read(), ns)
    return ns['__version__']


def parse_requirements(name: str) -> List[str]:
    """The requirement lines of ``requirements/<name>.txt`` (comments and blank lines dropped)."""
    with open(osp.join(ROOT, 'requirements', f'{name}.txt')) as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return [line for line in lines if line]


def mim_mode(argv: List[str]) -> str:
    """How ``.mim`` is filled for this setup.py command: ``'symlink'`` for editable installs
    (``pip install -e .``: ``editable_wheel``, legacy ``develop``), ``'copy'`` when the package is
    built or installed for real (wheel, sdist, ``build``, ``install``), ``''`` otherwise (metadata
    queries such as ``egg_info``)."""
    if {'develop', 'editable_wheel'} & set(argv):
        return 'symlink'
    if {'sdist', 'bdist_wheel', 'build', 'build_py', 'install'} & set(argv):
        return 'copy'
    return ''


def add_mim_extension(mode: str, root: str = ROOT) -> None:
    """Put :data:`MIM_FILES` into ``cotap_mm/.mim``, as mmpretrain / mmseg / mmdet do.

    Args:
        mode (str): ``'symlink'`` (relative links to the checkout, so edits show at once) or
            ``'copy'`` (a self-contained package); ``''`` does nothing.
        root (str): the checkout. Defaults to this file's folder.
    """
    if not mode:
        return
    if mode not in ('symlink', 'copy'):
        raise ValueError(f"mode must be 'symlink', 'copy' or '', got {mode!r}")
    mim_path = osp.join(root, 'cotap_mm', '.mim')
    os.makedirs(mim_path, exist_ok=True)
    for name in MIM_FILES:
        src, dst = osp.join(root, name), osp.join(mim_path, name)
        if not osp.exists(src):
            raise FileNotFoundError(f'{src} is missing: the package ships it in cotap_mm/.mim')
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        if mode == 'symlink':
            os.symlink(osp.relpath(src, mim_path), dst)
        elif osp.isdir(src):
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copyfile(src, dst)


def main() -> None:
    add_mim_extension(mim_mode(sys.argv))
    setup(
        name='cotap_mm',
        version=read_version(),
        description='Dense self-supervised learning (CoTAP, DDSSL, SCFS) as an OpenMMLab plugin',
        long_description=open(osp.join(ROOT, 'README.md')).read(),
        long_description_content_type='text/markdown',
        packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
        # cotap_mm/.mim (configs, tools, model index), listed in MANIFEST.in
        include_package_data=True,
        python_requires='>=3.9',
        install_requires=[
            'torch>=2.1',
            'torchvision',
            'numpy',
            'mmengine==0.10.7',
            'mmcv>=2.0.0,<2.2.0',  # mmseg 1.2.2 / mmdet 3.3.0 assert mmcv < 2.2.0
            'mmpretrain==1.2.0',
            'mmsegmentation==1.2.2',
            'mmdet==3.3.0',
            'ftfy',   # needed by mmseg 1.2.2, not declared by it
            'regex',  # idem
            'setuptools<81',  # pkg_resources: mmengine cross-package configs, mmcv build
            'scipy',
            'tqdm',
        ],
        extras_require={
            'tests': parse_requirements('tests'),
            'tensorboard': parse_requirements('tensorboard'),
            'mim': parse_requirements('mim'),
        },
        zip_safe=False,
    )


if __name__ == '__main__':
    main()

"""cotap_mm: dense self-supervised learning (CoTAP, de-coupling/de-positioning, SCFS) for OpenMMLab.

torch/torchvision and mmcv (with compiled ops) are installed by ``tools/setup_env.sh``: mmcv 2.1.0
has to be built against the installed torch, which pip cannot express. They are still declared here
so that ``pip install -e .`` in an existing OpenMMLab environment checks them.
"""
import os.path as osp

from setuptools import find_packages, setup


def read_version() -> str:
    ns: dict = {}
    with open(osp.join(osp.dirname(__file__), 'cotap_mm', 'version.py')) as f:
        exec(f.read(), ns)
    return ns['__version__']


setup(
    name='cotap_mm',
    version=read_version(),
    description='Dense self-supervised learning (CoTAP, DDSSL, SCFS) as an OpenMMLab plugin',
    long_description=open(osp.join(osp.dirname(__file__), 'README.md')).read(),
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
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
        'tests': ['pytest', 'timm'],
    },
    zip_safe=False,
)

"""Every config file under configs/ (``_base_`` files included) parses with MMEngine."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True))


def test_every_method_and_protocol_has_configs():
    rel = {osp.relpath(p, osp.join(REPO, 'configs')) for p in CONFIGS}
    for folder in ('_base_/', 'cotap/', 'ddssl/', 'scfs/', 'benchmarks/mmseg/', 'benchmarks/mmdet/',
                   'benchmarks/classification/'):
        assert any(r.startswith(folder) for r in rel), f'no config under configs/{folder}'
    assert 'cotap_vits16_coco.py' in rel


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.relpath(p, REPO))
def test_config_parses(path):
    cfg = Config.fromfile(path)
    assert len(cfg.keys()) > 0
    if '_base_' not in path.split(osp.sep):  # a runnable config names its model
        assert 'model' in cfg, f'{path} defines no model'

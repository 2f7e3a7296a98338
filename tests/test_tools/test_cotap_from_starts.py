"""tools/analysis_tools/cotap_from_starts.py: CoTAP from starts of different quality, at toy length."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from cotap_test_helpers.tool_runs import load_tool

TOY = ['--dino-iters', '3', '--image-iters', '2', '--dense-iters', '3', '--cotap-iters', '2',
       '--train-images', '8', '--probe-train', '6', '--probe-val', '3', '--probe-epochs', '1']


def _tool():
    return load_tool('tools/analysis_tools/cotap_from_starts.py')


def test_toy_run_writes_a_row_per_start_and_resumes(tmp_path):
    tool = _tool()
    work = str(tmp_path / 'starts')
    rows = tool.main(TOY + ['--work-dir', work])
    assert [r['start'] for r in rows] == ['DINO (3 it, self-supervised)',
                                         'image-level labels (2 it)', 'dense labels (3 it)']
    for r in rows:
        assert 0.0 <= r['start_mIoU'] <= 1.0 and 0.0 <= r['cotap_mIoU'] <= 1.0
    text = open(osp.join(work, 'results.md')).read()
    assert 'dense labels (3 it)' in text and 'Random init' in text
    dense = osp.join(work, 'dense_sup_3.pth')
    stamp = osp.getmtime(dense)
    cotap_ckpt = osp.join(work, 'cotap_2', 'iter_2.pth')
    assert osp.isfile(cotap_ckpt)
    tool.main(TOY + ['--work-dir', work])  # everything found: nothing is trained again
    assert osp.getmtime(dense) == stamp


def test_supervised_start_loads_into_the_configs_it_feeds(tmp_path):
    """The saved keys are exactly the DINO config's backbone keys: the start is not silently lost."""
    tool = _tool()
    args = tool.parse_args(['--train-images', '4'])
    path = tool.supervised_start(str(tmp_path / 'dense.pth'), 1, False, args)
    saved = torch.load(path, map_location='cpu')['state_dict']
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    model = MODELS.build(Config.fromfile(tool.IMAGE_LEVEL_CFG).model)
    backbone_keys = {k for k in model.state_dict() if k.startswith('backbone.')}
    assert set(saved) == backbone_keys
    from mmengine.runner import load_checkpoint
    load_checkpoint(model, path, map_location='cpu')
    # the 96 px start's position embedding is resized to the config's 64 px on load; the rest is equal
    for k, v in saved.items():
        if 'pos_embed' not in k:
            assert torch.equal(model.state_dict()[k], v), k


@pytest.mark.parametrize('bad', [['--cotap-iters', '0'], ['--dense-iters', '0'],
                                 ['--image-iters', '-1']])
def test_bad_arguments_are_named(bad):
    with pytest.raises(ValueError, match=bad[0].lstrip('-').split('-')[0]):
        _tool().parse_args(bad)

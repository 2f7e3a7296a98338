"""tools/analysis_tools/score_checkpoint.py end to end on tiny data in the VOC / COCO-Stuff / ADE20K
layouts, against the protocols applied to features computed independently of the tool."""
import json
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint

from cotap_mm.evaluation.frozen_model import load_frozen_model
from cotap_mm.evaluation.labelled_sets import load_seg_arrays, seg_dataset_cfg
from cotap_mm.evaluation.nn_retrieval import nn_retrieval_eval
from cotap_mm.evaluation.overclustering import overclustering_eval
from cotap_test_helpers.cotap_checkpoint import DEMO_CONFIG, build_tiny_cotap, save_cotap_checkpoint
from cotap_test_helpers.seg_data import write_ade20k, write_coco_stuff, write_voc_aug
from cotap_test_helpers.tool_runs import load_tool
from cotap_test_helpers.tiny_runs import REPO_ROOT

DINO_CONFIG = osp.join(REPO_ROOT, 'configs/dino/dino_vit-tiny-p8_1xb8-1500it_synthetic.py')
DEMO_ARCH = dict(embed_dims=96, num_layers=4, num_heads=3, feedforward_channels=384)
SMALL = ['--image-size', '32', '--linear-epochs', '2', '--nn-k', '5', '--kmeans-iters', '20']


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('score')
    write_voc_aug(str(root / 'voc'), num_train=4, num_val=2, size=64)
    write_coco_stuff(str(root / 'coco'), num_train=3, num_val=3, size=64)
    write_ade20k(str(root / 'ade'), num_train=3, num_val=2, size=64)
    cotap = save_cotap_checkpoint(build_tiny_cotap(DEMO_ARCH, img_size=64, num_prototypes=16),
                                  str(root / 'cotap.pth'))
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    torch.manual_seed(0)
    dino = MODELS.build(Config.fromfile(DINO_CONFIG).model)
    torch.save({'state_dict': dino.state_dict(), 'meta': {}}, str(root / 'dino.pth'))
    return root, cotap, str(root / 'dino.pth')


def _reference_features(cfg_path, ckpt, images):
    """C and 2C features without the tool's loader or extractors: mmengine's load_checkpoint, the
    model's preprocessor statistics applied by hand, CoTAP.extract_feat / the ViT's featmap."""
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    model = MODELS.build(Config.fromfile(cfg_path).model)
    load_checkpoint(model, ckpt, map_location='cpu')
    model.eval()
    pre = model.data_preprocessor
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = (x - pre.mean.view(1, 3, 1, 1)) / pre.std.view(1, 3, 1, 1)
    with torch.no_grad():
        vit = model.backbone
        vit.out_type, vit.out_indices = 'featmap', [len(vit.layers) - 1]
        return vit(x)[-1], model.extract_feat(x)


def test_cotap_checkpoint_on_voc_scores_c_and_2c(setup, tmp_path):
    root, cotap, _ = setup
    out_json, out_md = str(tmp_path / 's.json'), str(tmp_path / 's.md')
    res = load_tool('tools/analysis_tools/score_checkpoint.py').main([
        DEMO_CONFIG, cotap, '--dataset', 'voc', '--data-root', str(root / 'voc'), *SMALL,
        '--clusters', '24', '--name', 'tiny-cotap', '--out-json', out_json, '--out-md', out_md])
    feats = res['features']
    assert list(feats) == ['C', '2C'] and feats['C']['dim'] == 96 and feats['2C']['dim'] == 192
    assert res['num_classes'] == 21 and res['num_train'] == 4 and res['num_val'] == 2
    for f in feats.values():
        assert set(f['overclustering']) == {'hungarian_K21', 'majority_K24'}
        for r in (f['linear'], f['nn'], *f['overclustering'].values()):
            assert 0.0 <= r['mIoU'] <= 1.0
    # the same numbers from independently computed features and the protocol functions
    tr_i, tr_m, _ = load_seg_arrays(seg_dataset_cfg('voc', str(root / 'voc'), 'train'), 32)
    va_i, va_m, _ = load_seg_arrays(seg_dataset_cfg('voc', str(root / 'voc'), 'val'), 32)
    tr_c, tr_2c = _reference_features(DEMO_CONFIG, cotap, tr_i)
    va_c, va_2c = _reference_features(DEMO_CONFIG, cotap, va_i)
    ref_nn = nn_retrieval_eval(tr_2c, tr_m, va_2c, va_m, 21, k=5, temperature=0.02)
    assert feats['2C']['nn']['mIoU'] == pytest.approx(ref_nn['mIoU'], abs=1e-6)
    assert feats['2C']['nn']['memory_entries'] == ref_nn['memory_entries']
    ref_oc = overclustering_eval(va_c, va_m, 21, 21, 'hungarian', iters=20)
    assert feats['C']['overclustering']['hungarian_K21']['mIoU'] == pytest.approx(
        ref_oc['mIoU'], abs=1e-6)
    with open(out_json) as f:
        assert json.load(f)['features']['2C']['nn']['mIoU'] == feats['2C']['nn']['mIoU']
    md = open(out_md).read().splitlines()
    assert md[0].startswith('| model | dataset | features | linear mIoU |') and len(md) == 4
    assert md[3].startswith('| tiny-cotap | voc | 2C (192-d) |')
    assert f'| {100 * feats["2C"]["nn"]["mIoU"]:.2f} |' in md[3]


def test_baseline_on_coco_stuff27_has_only_c(setup):
    root, _, dino = setup
    tool = load_tool('tools/analysis_tools/score_checkpoint.py')
    res = tool.main([DINO_CONFIG, dino, '--dataset', 'coco-stuff27', '--data-root',
                     str(root / 'coco'), *SMALL, '--clusters', '30', '--protocols', 'nn',
                     'overclustering', '--val-ann-file', ''])
    assert list(res['features']) == ['C'] and res['num_classes'] == 27
    assert res['num_val'] == 3 and 'linear' not in res['features']['C']
    with pytest.raises(ValueError, match='object-aware filter'):
        tool.main([DINO_CONFIG, dino, '--dataset', 'coco-stuff27', '--data-root',
                   str(root / 'coco'), '--features', '2C'])


def test_ade20k_and_generated_scenes(setup):
    root, cotap, _ = setup
    tool = load_tool('tools/analysis_tools/score_checkpoint.py')
    res = tool.main([DEMO_CONFIG, cotap, '--dataset', 'ade20k', '--data-root', str(root / 'ade'),
                     *SMALL, '--features', 'C', '--protocols', 'linear', 'nn', '--branch',
                     'teacher'])
    assert res['num_classes'] == 150 and list(res['features']) == ['C']
    assert set(res['features']['C']) == {'linear', 'nn', 'dim', 'grid'}
    assert len(res['features']['C']['nn']['per_class_iou']) == 150
    gen = tool.main([DEMO_CONFIG, cotap, '--dataset', 'synthetic', '--num-train', '3',
                     '--num-val', '2', '--num-objects', '3', *SMALL, '--clusters', '8'])
    assert gen['num_classes'] == 4 and list(gen['features']) == ['C', '2C']


def test_load_frozen_model_branches_and_missing_keys(setup, tmp_path):
    _, cotap, _ = setup
    sd = torch.load(cotap, weights_only=True)['state_dict']
    for branch, prefix in (('student', ''), ('teacher', 'teacher.')):
        model = load_frozen_model(DEMO_CONFIG, cotap, branch)
        for key in ('backbone.layers.0.attn.qkv.weight', 'neck.prototypes'):
            torch.testing.assert_close(model.state_dict()[key], sd[prefix + key])
        assert not model.training and not any(p.requires_grad for p in model.parameters())
    bad = str(tmp_path / 'bad.pth')
    torch.save({'state_dict': {k: v for k, v in sd.items() if not k.startswith('neck.')}}, bad)
    with pytest.raises(KeyError, match=r'neck\.\* tensors are missing'):
        load_frozen_model(DEMO_CONFIG, bad)
    with pytest.raises(KeyError, match='no teacher'):
        torch.save({'state_dict': {'backbone.x': torch.zeros(1)}}, bad)
        load_frozen_model(DEMO_CONFIG, bad, 'teacher')
    assert not np.isnan(sd['neck.prototypes'].sum().item())

import os

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from PIL import Image

from cotap_mm.evaluation.knn_classify import (build_cls_feature_extractor, knn_accuracy,
                                              knn_scores, knn_sweep)
from cotap_test_helpers.cotap_checkpoint import (DEMO_CONFIG, build_tiny_cotap,
                                                 save_cotap_checkpoint)
from cotap_mm.models.necks.object_prototype_neck import filtered_forward
from cotap_test_helpers.knn_reference import brute_knn_votes
from cotap_test_helpers.tool_runs import load_tool

ARCH = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)


def test_knn_scores_rank_like_dinos_vote():
    rng = np.random.default_rng(0)
    tf = rng.normal(size=(50, 8))
    ty = rng.integers(0, 4, 50)
    q = rng.normal(size=(12, 8))
    ref = brute_knn_votes(tf, ty, q, 4, 7, 0.07)  # DINO's un-normalised exp(sim / T) weights
    got = knn_scores(torch.from_numpy(tf).float(), torch.from_numpy(ty),
                     torch.from_numpy(q).float(), 4, k=7, temperature=0.07, query_chunk=5,
                     memory_chunk=9).double().numpy()
    # the same vote up to the per-image normalisation
    np.testing.assert_allclose(got, ref / ref.sum(1, keepdims=True), rtol=1e-4, atol=1e-7)


def test_knn_accuracy_hand_case_and_sweep():
    tf = torch.tensor([[1., 0.], [0.9, 0.1], [0., 1.], [0.1, 0.9]])
    ty = torch.tensor([0, 0, 1, 1])
    vf = torch.tensor([[1., 0.05], [0.05, 1.], [0.6, 0.4]])
    vy = torch.tensor([0, 1, 1])
    res = knn_accuracy(tf, ty, vf, vy, 2, k=2, temperature=0.1)
    # the third image's two nearest neighbours are both class 0: 2 of 3 right; top-5 = all
    assert res['top1'] == pytest.approx(2 / 3) and res['top5'] == 1.0
    sweep = knn_sweep(tf, ty, vf, vy, 2, ks=(1, 4), temperatures=(0.1, 10.0))
    assert [(r['k'], r['temperature']) for r in sweep['table']] == [(1, 0.1), (1, 10.0),
                                                                  (4, 0.1), (4, 10.0)]
    for row in sweep['table']:
        ref = knn_accuracy(tf, ty, vf, vy, 2, k=row['k'], temperature=row['temperature'])
        assert row['top1'] == pytest.approx(ref['top1'])
    assert sweep['best']['top1'] == max(r['top1'] for r in sweep['table'])
    assert 'validation set' in sweep['selected_on']
    with pytest.raises(ValueError, match=r'train_labels must be in \[0, 2\)'):
        knn_accuracy(tf, ty + 1, vf, vy, 2)
    with pytest.raises(ValueError, match='k=9 neighbours asked from a memory of 4'):
        knn_accuracy(tf, ty, vf, vy, 2, k=9)


@pytest.fixture(scope='module')
def cotap(tmp_path_factory):
    model = build_tiny_cotap(ARCH, img_size=32, num_prototypes=4)
    path = save_cotap_checkpoint(model, str(tmp_path_factory.mktemp('knn') / 'c.pth'))
    return model, path


def test_cls_extractors_c_and_2c(cotap):
    model, _ = cotap
    imgs = torch.rand(2, 3, 32, 32) * 255
    pre = model.data_preprocessor
    x = (imgs - pre.mean.view(1, 3, 1, 1)) / pre.std.view(1, 3, 1, 1)
    vit = model.backbone
    old = vit.out_type, vit.out_indices
    vit.out_type, vit.out_indices = 'cls_token', [len(vit.layers) - 1]
    ref_c = vit(x)[-1]
    vit.out_type, vit.out_indices = old
    torch.testing.assert_close(build_cls_feature_extractor(model, 'C')(imgs), ref_c)
    ref_2c = filtered_forward(model.backbone, model.neck, x).cls
    got_2c = build_cls_feature_extractor(model, '2C')(imgs)
    assert got_2c.shape == (2, 64)
    torch.testing.assert_close(got_2c, ref_2c)
    with pytest.raises(ValueError, match='object-aware filter'):
        build_cls_feature_extractor(model.backbone, '2C')


def _write_imagenet(root, wnids, per_class, seed):
    rng = np.random.default_rng(seed)
    for c, wnid in enumerate(wnids):
        os.makedirs(root / wnid, exist_ok=True)
        for i in range(per_class):
            arr = np.clip(rng.normal(60 + 60 * c, 30, size=(32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / wnid / f'{wnid}_{i}.JPEG', quality=95)


def test_knn_imagenet_tool_on_a_folder(cotap, tmp_path):
    _, ckpt = cotap
    wnids = ['n01440764', 'n01443537', 'n01484850']
    _write_imagenet(tmp_path / 'imagenet' / 'train', wnids, 4, 0)
    _write_imagenet(tmp_path / 'imagenet' / 'val', wnids[:2], 2, 1)
    cfg = tmp_path / 'tiny_cotap.py'
    cfg.write_text(f'_base_ = [{DEMO_CONFIG!r}]\n'
                   f'model = dict(backbone=dict(arch={ARCH!r}, img_size=32), '
                   'neck=dict(num_prototypes=4))\n')
    tool = load_tool('tools/analysis_tools/knn_imagenet.py')
    out = tool.main([str(cfg), ckpt, '--data-root', str(tmp_path / 'imagenet'), '--image-size',
                     '32', '--resize', '32', '--k', '3', '--sweep', '--sweep-k', '1', '3',
                     '--sweep-t', '0.07', '--max-per-class', '3', '--out-json',
                     str(tmp_path / 'knn.json')])
    assert out['num_train'] == 9 and out['num_val'] == 4 and out['num_classes'] == 3
    assert out['dim'] == 32 and len(out['sweep']['table']) == 2
    # reference: PIL images (already 32 x 32: resize and crop are no-ops), the ViT's CLS token
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    from mmengine.runner import load_checkpoint
    model = MODELS.build(Config.fromfile(str(cfg)).model)
    load_checkpoint(model, ckpt, map_location='cpu')
    model.eval()

    def feats(split, names):
        arr = np.stack([np.asarray(Image.open(tmp_path / 'imagenet' / split / w / n)
                                   .convert('RGB')) for w, n in names])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float()
        x = (x - model.data_preprocessor.mean.view(1, 3, 1, 1)) / \
            model.data_preprocessor.std.view(1, 3, 1, 1)
        model.backbone.out_type = 'cls_token'
        model.backbone.out_indices = [1]
        with torch.no_grad():
            return model.backbone(x)[-1]

    tr = [(w, f'{w}_{i}.JPEG') for w in wnids for i in range(3)]
    va = [(w, f'{w}_{i}.JPEG') for w in wnids[:2] for i in range(2)]
    ref = knn_accuracy(feats('train', tr), torch.arange(3).repeat_interleave(3), feats('val', va),
                       torch.tensor([0, 0, 1, 1]), 3, k=3, temperature=0.07)
    assert out['knn']['top1'] == pytest.approx(ref['top1'])
    # a val class that training does not have
    _write_imagenet(tmp_path / 'imagenet' / 'val', ['n99999999'], 1, 2)
    with pytest.raises(ValueError, match='n99999999'):
        tool.main([str(cfg), ckpt, '--data-root', str(tmp_path / 'imagenet'), '--image-size',
                   '32'])

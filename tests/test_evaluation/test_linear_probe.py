import json
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cotap_mm.evaluation.linear_probe import (build_patch_feature_extractor, confusion_matrix,
                                              dense_linear_probe, evaluate_linear_probe,
                                              extract_features, fit_linear_probe, flip_samples,
                                              images_to_tensor, miou_from_confusion,
                                              predict_linear_probe)
from cotap_test_helpers.tool_runs import load_tool

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TINY_VIT = dict(
    type='VisionTransformer',
    arch=dict(embed_dims=32, num_layers=1, num_heads=2, feedforward_channels=64),
    img_size=64,
    patch_size=16)


# ----------------------------------------------------------------------------- metrics


def test_confusion_and_miou_hand_computed():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    cm = confusion_matrix(pred, gt, num_classes=3)
    # gt 0: pred 0, 1 ; gt 1: pred 1, 1 ; gt 2: pred 0 ; ignore pixel dropped
    np.testing.assert_array_equal(cm.numpy(), [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    res = miou_from_confusion(cm)
    # IoU0 = 1 / (2 + 2 - 1) = 1/3 ; IoU1 = 2 / (2 + 3 - 2) = 2/3 ; IoU2 = 0 / (1 + 0 - 0) = 0
    np.testing.assert_allclose(res['per_class_iou'], [1 / 3, 2 / 3, 0.0])
    assert res['mIoU'] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert res['pixel_acc'] == pytest.approx(3 / 5)
    assert res['num_pixels'] == 5
    assert res['mAcc'] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_miou_excludes_absent_classes():
    cm = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    res = miou_from_confusion(cm)
    assert np.isnan(res['per_class_iou'][2])
    assert res['mIoU'] == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_confusion_matches_brute_force_and_ignore():
    rng = np.random.default_rng(0)
    k = 5
    gt = rng.integers(0, k, size=(3, 7, 9))
    gt[rng.random(gt.shape) < 0.2] = 255
    pred = rng.integers(0, k, size=gt.shape)
    ref = np.zeros((k, k), dtype=np.int64)
    for g, p in zip(gt.ravel(), pred.ravel()):
        if g != 255:
            ref[g, p] += 1
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(pred), gt, k).numpy(), ref)
    # a custom ignore index
    gt2 = np.where(gt == 255, 7, gt)
    np.testing.assert_array_equal(confusion_matrix(pred, gt2, k, ignore_index=7).numpy(), ref)


def test_confusion_bad_input():
    with pytest.raises(ValueError, match='same shape'):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 2)
    with pytest.raises(ValueError, match='gt values'):
        confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 3), 2)
    with pytest.raises(ValueError, match='pred values'):
        confusion_matrix(np.full((2, 2), 5), np.zeros((2, 2), int), 2)
    with pytest.raises(TypeError, match='integer'):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 2), int), 2)
    with pytest.raises(ValueError, match='num_classes'):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 2), int), 0)
    with pytest.raises(ValueError, match='square'):
        miou_from_confusion(np.zeros((2, 3)))


# ----------------------------------------------------------------------------- probe


def _patch_data(n, k, feat_fn, seed, grid=4, patch=4, block=1):
    """Masks constant per patch, balanced classes; features from the patch labels.

    ``block``: labels constant over ``block x block`` patches. With bilinear upsampling of the
    logits (the protocol), pixels at a patch corner whose two neighbours share a class different
    from theirs are outvoted; coarser label blocks make such corners rare (objects span patches).
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n, grid // block, grid // block), generator=g)
    labels = labels.repeat_interleave(block, 1).repeat_interleave(block, 2)
    masks = labels.repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    return feat_fn(labels, g), masks


def _onehot_feats(labels, g, c=8, noise=0.1):
    f = F.one_hot(labels, c).permute(0, 3, 1, 2).float()
    return f + noise * torch.randn(f.shape, generator=g)


def test_probe_separable_features_near_perfect():
    k = 4
    tr_f, tr_m = _patch_data(24, k, _onehot_feats, 0, grid=8, block=2)
    va_f, va_m = _patch_data(12, k, _onehot_feats, 1, grid=8, block=2)
    probe = fit_linear_probe(tr_f, tr_m, k, epochs=40, lr=0.05, batch_size=8)
    assert isinstance(probe, torch.nn.Conv2d) and probe.kernel_size == (1, 1)
    res = evaluate_linear_probe(probe, va_f, va_m, k)
    assert res['mIoU'] > 0.95, res['mIoU']
    assert res['confusion'].sum() == va_m.numel()
    pred = predict_linear_probe(probe, va_f, (32, 32))
    assert pred.shape == (12, 32, 32) and pred.dtype == torch.long
    # at patch centres (no interpolation) the prediction is exact
    np.testing.assert_array_equal(pred[:, 1::4, 1::4].numpy(), va_m[:, 1::4, 1::4].numpy())
    # evaluate == confusion of predict (independent path)
    cm = confusion_matrix(pred, va_m, k)
    np.testing.assert_array_equal(cm.numpy(), res['confusion'])


def test_probe_random_features_chance_level():
    k = 4
    rand = lambda labels, g: torch.randn(labels.shape[0], 8, 4, 4, generator=g)  # noqa: E731
    tr_f, tr_m = _patch_data(24, k, rand, 0)
    va_f, va_m = _patch_data(24, k, rand, 1)
    probe = fit_linear_probe(tr_f, tr_m, k, epochs=20, lr=0.05, batch_size=8)
    res = evaluate_linear_probe(probe, va_f, va_m, k)
    assert res['mIoU'] < 0.3, res['mIoU']


def test_probe_respects_ignore_index():
    k = 3
    tr_f, tr_m = _patch_data(16, k, _onehot_feats, 0)
    va_f, va_m = _patch_data(8, k, _onehot_feats, 1)
    centres = (slice(None), slice(1, None, 4), slice(1, None, 4))
    # top half of every training mask carries wrong labels: they hurt unless ignored
    wrong = tr_m.clone()
    wrong[:, :8] = (tr_m[:, :8] + 1) % k
    ignored = tr_m.clone()
    ignored[:, :8] = 255
    p_wrong = fit_linear_probe(tr_f, wrong, k, epochs=20, lr=0.05, batch_size=8)
    p_ign = fit_linear_probe(tr_f, ignored, k, epochs=20, lr=0.05, batch_size=8)
    acc = lambda p: (predict_linear_probe(p, va_f, (16, 16))[centres] ==  # noqa: E731
                     va_m[centres]).float().mean().item()
    assert acc(p_ign) == 1.0
    assert acc(p_wrong) < 0.9
    va_m2 = va_m.clone()
    va_m2[:, :, :4] = 255
    res = evaluate_linear_probe(p_ign, va_f, va_m2, k)
    assert res['num_pixels'] == int((va_m2 != 255).sum())
    with pytest.raises(ValueError, match='only ignore_index'):
        fit_linear_probe(tr_f, torch.full_like(tr_m, 255), k, epochs=1)
    with pytest.raises(ValueError, match='train_masks values'):
        fit_linear_probe(tr_f, tr_m + 5, k, epochs=1)
    with pytest.raises(ValueError, match='same N'):
        fit_linear_probe(tr_f, tr_m[:3], k, epochs=1)
    with pytest.raises(ValueError, match=r'\[N, C, h, w\]'):
        fit_linear_probe(tr_f[0], tr_m, k, epochs=1)


def _reference_probe(c, k, seed):
    """The probe's documented initialisation, written out: U(+-1/sqrt(C)) weights from a seeded
    generator, zero bias; returns the conv and the generator (for the draws that follow)."""
    ref = torch.nn.Conv2d(c, k, 1)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bound = 1 / np.sqrt(c)
        ref.weight.copy_(torch.empty_like(ref.weight).uniform_(-bound, bound, generator=g))
        ref.bias.zero_()
    return ref, g


def test_probe_upsamples_logits_bilinearly():
    """One full-batch Adam step from the same init equals a hand-written step."""
    k = 3
    tr_f, tr_m = _patch_data(4, k, _onehot_feats, 0)
    probe = fit_linear_probe(tr_f, tr_m, k, epochs=1, lr=0.01, batch_size=4, seed=3)
    ref, g = _reference_probe(8, k, seed=3)
    opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    order = torch.randperm(4, generator=g)
    logits = F.interpolate(ref(tr_f[order]), size=(16, 16), mode='bilinear', align_corners=False)
    F.cross_entropy(logits, tr_m[order], ignore_index=255).backward()
    opt.step()
    torch.testing.assert_close(probe.weight, ref.weight)
    torch.testing.assert_close(probe.bias, ref.bias)


def test_flip_samples_by_hand():
    feats = torch.arange(2 * 1 * 2 * 3, dtype=torch.float).view(2, 1, 2, 3)
    mirrored = -feats
    masks = torch.tensor([[[0, 1, 2, 3]], [[4, 5, 6, 7]]])
    x, y = flip_samples(feats, mirrored, masks, torch.tensor([True, False]))
    assert torch.equal(x[0], -feats[0]) and torch.equal(x[1], feats[1])
    assert y.tolist() == [[[3, 2, 1, 0]], [[4, 5, 6, 7]]]


def test_probe_flip_step_equals_hand_written_step():
    """With mirrored features: one full-batch Adam step from the same init and the same draws
    (init, permutation, one Bernoulli(0.5) per sample) equals a hand-written step."""
    k = 3
    tr_f, tr_m = _patch_data(6, k, _onehot_feats, 0)
    mirrored = torch.randn(tr_f.shape, generator=torch.Generator().manual_seed(1))
    probe = fit_linear_probe(tr_f, tr_m, k, epochs=1, lr=0.01, batch_size=6, seed=3,
                             train_feats_flipped=mirrored)
    ref, g = _reference_probe(8, k, seed=3)
    opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    order = torch.randperm(6, generator=g)
    choose = torch.rand(6, generator=g) < 0.5
    assert 0 < int(choose.sum()) < 6  # both kinds in the batch
    x = torch.stack([mirrored[i] if c else tr_f[i] for i, c in zip(order.tolist(), choose)])
    y = torch.stack([tr_m[i].flip(-1) if c else tr_m[i] for i, c in zip(order.tolist(), choose)])
    logits = F.interpolate(ref(x), size=(16, 16), mode='bilinear', align_corners=False)
    F.cross_entropy(logits, y, ignore_index=255).backward()
    opt.step()
    torch.testing.assert_close(probe.weight, ref.weight)
    torch.testing.assert_close(probe.bias, ref.bias)
    with pytest.raises(ValueError, match='train_feats_flipped must have the shape'):
        fit_linear_probe(tr_f, tr_m, k, epochs=1, train_feats_flipped=mirrored[:2])


def test_dense_probe_flip_extracts_mirrored_training_images():
    k = 2
    seen = []

    def extract(images):  # features remember which image (and which side) they came from
        seen.append(images.clone())
        return F.avg_pool2d(images[:, :2], 4)

    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(4, 3, 8, 8, generator=g) * 255
    masks = torch.randint(0, k, (4, 8, 8), generator=g)
    val = (imgs[:2], masks[:2])
    dense_linear_probe(extract, (imgs, masks), val, k, epochs=1, batch_size=4, flip=True)
    assert len(seen) == 3  # train, mirrored train, val
    assert torch.equal(seen[0], imgs) and torch.equal(seen[1], imgs.flip(-1))
    seen.clear()
    off = dense_linear_probe(extract, (imgs, masks), val, k, epochs=2, batch_size=4, flip=False,
                             return_features=True)
    assert len(seen) == 2
    # flip=False (the default, the demo's protocol): the probe fit on the plain cached features
    ref = fit_linear_probe(F.avg_pool2d(imgs[:, :2], 4), masks, k, epochs=2, batch_size=4)
    torch.testing.assert_close(off['probe'].weight, ref.weight)
    with pytest.raises(TypeError, match='one-shot iterator'):
        dense_linear_probe(extract, iter([(imgs, masks)]), val, k, epochs=1, flip=True)
    with pytest.raises(TypeError, match='flip must be a bool'):
        dense_linear_probe(extract, (imgs, masks), val, k, flip='yes')
    # mirrored masks come with mirrored images
    f, m = extract_features(lambda x: x[:, :, ::4, ::4], (imgs, masks), mirror=True)
    assert torch.equal(m, masks.flip(-1)) and torch.equal(f, imgs.flip(-1)[:, :, ::4, ::4])


def test_dense_linear_probe_end_to_end_with_oracle_extractor():
    k = 3

    def oracle(images):  # patch features = class one-hot read off the red channel
        lab = (images[:, 0] / 100).round().long().clamp(0, k - 1)
        oh = F.one_hot(lab, k).permute(0, 3, 1, 2).float()
        return F.avg_pool2d(oh, 4)

    g = torch.Generator().manual_seed(0)

    def data(n):
        lab = torch.randint(0, k, (n, 4, 4), generator=g)
        masks = lab.repeat_interleave(4, 1).repeat_interleave(4, 2)
        imgs = masks[:, None].float().repeat(1, 3, 1, 1) * 100
        return imgs, masks

    tr, va = data(16), data(8)
    res = dense_linear_probe(oracle, tr, va, k, epochs=30, lr=0.05, batch_size=8)
    assert res['mIoU'] > 0.95 and res['epoch'] == 29
    assert res['per_class_iou'].shape == (k, ) and 0 <= res['pixel_acc'] <= 1
    best = dense_linear_probe(oracle, tr, va, k, epochs=5, lr=0.05, batch_size=8, select='best')
    last = dense_linear_probe(oracle, tr, va, k, epochs=5, lr=0.05, batch_size=8)
    assert best['mIoU'] >= last['mIoU'] - 1e-12
    # an iterable of batches (dicts) gives the same result as arrays
    batches = [dict(images=tr[0][i:i + 8], masks=tr[1][i:i + 8]) for i in (0, 8)]
    res2 = dense_linear_probe(oracle, batches, va, k, epochs=30, lr=0.05, batch_size=8)
    assert res2['mIoU'] == pytest.approx(res['mIoU'])
    with pytest.raises(ValueError, match='select'):
        dense_linear_probe(oracle, tr, va, k, select='worst')


def test_extract_features_checks_output():
    imgs = torch.zeros(2, 3, 8, 8)
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=r'\[B, C, h, w\]'):
        extract_features(lambda x: x.mean((2, 3)), (imgs, masks))
    f, m = extract_features(lambda x: x[:, :, ::4, ::4] * 2, (imgs, masks), batch_size=1)
    assert f.shape == (2, 3, 2, 2) and m.shape == (2, 8, 8) and not f.requires_grad
    # numpy NHWC uint8 images are permuted
    x = images_to_tensor(np.zeros((2, 5, 6, 3), np.uint8))
    assert x.shape == (2, 3, 5, 6) and x.dtype == torch.float32
    with pytest.raises(ValueError, match='images'):
        images_to_tensor(torch.zeros(2, 5, 6, 3))


# ----------------------------------------------------------------------------- ViT extractor


def _tiny_vit():
    from mmpretrain.registry import MODELS
    return MODELS.build(dict(TINY_VIT))


def test_build_patch_feature_extractor_vit():
    torch.manual_seed(0)
    vit = _tiny_vit()
    vit.out_type = 'cls_token'
    extract = build_patch_feature_extractor(vit, mean=None, std=None)
    x = torch.rand(2, 3, 64, 64) * 255
    f = extract(x)
    assert f.shape == (2, 32, 4, 4) and not f.requires_grad
    assert vit.out_type == 'cls_token'  # restored
    # reference: the last-layer tokens (after the final norm) reshaped by hand
    with torch.no_grad():
        vit.out_type = 'raw'
        tokens = vit(x)[-1]
    ref = tokens[:, 1:].reshape(2, 4, 4, 32).permute(0, 3, 1, 2)
    torch.testing.assert_close(f, ref)
    # normalisation is applied; a model with .backbone uses its backbone
    model = torch.nn.Module()
    model.backbone = vit
    e2 = build_patch_feature_extractor(model, mean=(10., 20., 30.), std=(2., 2., 2.))
    vit.out_type = 'featmap'
    torch.testing.assert_close(e2(x), vit(((x - torch.tensor([10., 20., 30.]).view(1, 3, 1, 1))
                                           / 2))[-1])
    with pytest.raises(TypeError, match=r'\[B, C, h, w\]'):
        build_patch_feature_extractor(torch.nn.Flatten())(x)
    with pytest.raises(TypeError, match='nn.Module'):
        build_patch_feature_extractor(lambda x: x)


# ----------------------------------------------------------------------------- CLI


def _load_tool(name):
    return load_tool(f'tools/analysis_tools/{name}.py')


@pytest.fixture
def tiny_cfg_ckpt(tmp_path):
    cfg = tmp_path / 'tiny_vit.py'
    cfg.write_text(f'model = dict(type="ImageClassifier", backbone={TINY_VIT!r})\n')
    torch.manual_seed(1)
    vit = _tiny_vit()
    sd = {'backbone.' + k: v for k, v in vit.state_dict().items()}
    sd['head.fc.weight'] = torch.zeros(2, 32)
    ckpt = tmp_path / 'tiny.pth'
    torch.save({'state_dict': sd, 'meta': {}}, str(ckpt))
    return str(cfg), str(ckpt), vit


def test_dense_probe_cli_synthetic(tiny_cfg_ckpt, tmp_path):
    cfg, ckpt, _ = tiny_cfg_ckpt
    tool = _load_tool('dense_probe')
    out_json = str(tmp_path / 'res.json')
    res = tool.main([cfg, ckpt, '--data', 'synthetic', '--num-train', '4', '--num-val', '2',
                     '--image-size', '64', '--num-classes', '3', '--epochs', '2',
                     '--batch-size', '2', '--out-json', out_json, '--vis-dir',
                     str(tmp_path / 'vis'), '--num-vis', '1'])
    assert 0.0 <= res['mIoU'] <= 1.0 and res['num_classes'] == 4
    assert res['feature_shape'] == [32, 4, 4]
    for key in ('intra', 'inter', 'dispersion', 'intra_instance', 'instance_dispersion'):
        assert key in res['dispersion']
    with open(out_json) as f:
        saved = json.load(f)
    assert saved['num_classes'] == 4 and saved['flip'] is True and saved['select'] == 'last'
    assert osp.isfile(str(tmp_path / 'vis' / 'val_0000.png'))
    no_flip = tool.main([cfg, ckpt, '--data', 'synthetic', '--num-train', '4', '--num-val', '2',
                         '--image-size', '64', '--num-classes', '3', '--epochs', '2',
                         '--batch-size', '2', '--no-flip'])
    assert no_flip['flip'] is False


def test_dense_probe_cli_folder(tiny_cfg_ckpt, tmp_path):
    from cotap_mm.datasets.synthetic_scenes import write_ade20k_layout
    cfg, ckpt, _ = tiny_cfg_ckpt
    root = str(tmp_path / 'scenes')
    write_ade20k_layout(root, 3, 2, seed=0, size=64, num_classes=2)
    tool = _load_tool('dense_probe')
    res = tool.main([cfg, ckpt, '--data', root, '--image-size', '64', '--epochs', '1'])
    assert res['num_classes'] == 3  # from synthetic_scenes.json
    assert 'intra_instance' not in res['dispersion']


def test_load_backbone_weights(tiny_cfg_ckpt, tmp_path):
    from mmengine.config import Config
    cfg, ckpt, vit = tiny_cfg_ckpt
    tool = _load_tool('dense_probe')
    torch.manual_seed(123)
    bb = tool.build_backbone(Config.fromfile(cfg))
    counts = tool.load_backbone_weights(bb, ckpt)
    assert counts == dict(loaded=len(vit.state_dict()), missing=0, unexpected=0)
    for k, v in vit.state_dict().items():
        torch.testing.assert_close(bb.state_dict()[k], v)
    bad = str(tmp_path / 'bad.pth')
    torch.save({'state_dict': {'neck.x': torch.zeros(1)}, 'meta': {}}, bad)
    with pytest.raises(ValueError, match='matches the backbone'):
        tool.load_backbone_weights(bb, bad)


def test_normalize_images_per_channel():
    from cotap_mm.evaluation.linear_probe import IMAGENET_MEAN, IMAGENET_STD, normalize_images
    x = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    out = normalize_images(x)
    for c in range(3):
        ref = (x[:, c].double() - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(out[:, c].double(), ref, atol=1e-5)
    assert out.dtype == torch.float32
    assert torch.equal(normalize_images(x, None, None), x.float())

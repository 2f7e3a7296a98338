import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cotap_mm.evaluation.nn_retrieval import (build_memory_bank, dense_nn_retrieval, knn_vote,
                                              nn_retrieval_eval, nn_retrieval_predict,
                                              patches_per_image, sample_memory_patches,
                                              topk_cosine)
from cotap_test_helpers.knn_reference import brute_knn_votes


def _brute_predict(q_feats, mem_f, mem_l, num_classes, out_size, k, t):
    """Independent reference: the brute-force vote per patch, then bilinear upsampling of the
    score maps and argmax."""
    b, d, h, w = q_feats.shape
    q = q_feats.permute(0, 2, 3, 1).reshape(-1, d).numpy()
    scores = brute_knn_votes(mem_f.numpy(), mem_l.numpy(), q, num_classes, k, t, normalise=True)
    sc = torch.from_numpy(scores).float().reshape(b, h, w, num_classes).permute(0, 3, 1, 2)
    return F.interpolate(sc, size=out_size, mode='bilinear', align_corners=False).argmax(1)


def test_topk_chunked_equals_unchunked_and_brute_force():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(37, 6, generator=g)
    mem = torch.randn(101, 6, generator=g)
    ref = F.normalize(q, dim=1) @ F.normalize(mem, dim=1).t()
    ref_s, ref_i = ref.sort(dim=1, descending=True)
    for qc, mc in ((1000, 1000), (5, 7), (1, 3), (37, 100)):
        s, i = topk_cosine(q, mem, 9, query_chunk=qc, memory_chunk=mc)
        torch.testing.assert_close(s, ref_s[:, :9])
        assert torch.equal(i, ref_i[:, :9])
    with pytest.raises(ValueError, match='k=200 neighbours asked from a memory of 101'):
        topk_cosine(q, mem, 200)
    with pytest.raises(ValueError, match='share D'):
        topk_cosine(q, mem[:, :3], 2)


def test_knn_vote_hand_case():
    sims = torch.tensor([[0.9, 0.8, 0.1]])
    labels = torch.tensor([[1, 0, 1]])
    t = 0.1
    e = [math.exp(0.9 / t), math.exp(0.8 / t), math.exp(0.1 / t)]
    z = sum(e)
    scores = knn_vote(sims, labels, 3, t)
    torch.testing.assert_close(scores, torch.tensor([[e[1] / z, (e[0] + e[2]) / z, 0.0]]))
    with pytest.raises(ValueError, match='temperature'):
        knn_vote(sims, labels, 3, 0.0)
    with pytest.raises(ValueError, match=r'neighbor_labels must be in \[0, 2\)'):
        knn_vote(sims, labels + 1, 2, 0.1)


def test_sample_memory_patches_cap_labels_and_seed():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 4, 2, 3, generator=g)
    masks = torch.randint(0, 3, (3, 4, 6), generator=g)
    masks[0] = 255  # image 0: no labelled pixel -> no entry
    masks[1, :2, :2] = 255  # image 1: patch (0, 0) unlabelled
    f_all, l_all = sample_memory_patches(feats, masks, None, torch.Generator().manual_seed(1))
    assert f_all.shape == (6 + 5, 4)
    torch.testing.assert_close(f_all.norm(dim=1), torch.ones(11))
    # the stored entries are the normalised patch features in raster order, image by image
    ref = F.normalize(feats[1].permute(1, 2, 0).reshape(6, 4)[1:], dim=1)
    torch.testing.assert_close(f_all[:5], ref)
    for j, (r, c) in enumerate([(0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]):
        block = masks[1, 2 * r:2 * r + 2, 2 * c:2 * c + 2].flatten()
        block = block[block != 255]
        assert l_all[j] == torch.bincount(block, minlength=3).argmax()
    f2, l2 = sample_memory_patches(feats, masks, 2, torch.Generator().manual_seed(1))
    assert f2.shape == (4, 4)
    # every sampled entry is one of the image's labelled patches, with its label
    for fi, li in zip(f2, l2):
        j = int((f_all @ fi).argmax())
        torch.testing.assert_close(f_all[j], fi)
        assert l_all[j] == li
    f3, _ = sample_memory_patches(feats, masks, 2, torch.Generator().manual_seed(1))
    assert torch.equal(f2, f3)
    assert patches_per_image(10, 3) == 3 and patches_per_image(None, 3) is None
    with pytest.raises(ValueError, match='memory_size=2 is smaller than the 3'):
        patches_per_image(2, 3)


def test_nn_retrieval_matches_brute_force_and_chunking():
    g = torch.Generator().manual_seed(3)
    num_classes = 3
    tr_f = torch.randn(4, 5, 3, 3, generator=g)
    tr_m = torch.randint(0, num_classes, (4, 6, 6), generator=g)
    va_f = torch.randn(2, 5, 3, 3, generator=g)
    va_m = torch.randint(0, num_classes, (2, 7, 7), generator=g)
    va_m[0, 0] = 255
    gen = torch.Generator().manual_seed(0)
    mem_f, mem_l = sample_memory_patches(tr_f, tr_m, None, gen)
    ref = _brute_predict(va_f, mem_f, mem_l, num_classes, (7, 7), k=5, t=0.1)
    pred = nn_retrieval_predict(va_f, mem_f, mem_l, num_classes, (7, 7), k=5, temperature=0.1)
    assert torch.equal(pred, ref)
    pred_c = nn_retrieval_predict(va_f, mem_f, mem_l, num_classes, (7, 7), k=5, temperature=0.1,
                                  query_chunk=4, memory_chunk=5)
    assert torch.equal(pred_c, ref)
    res = nn_retrieval_eval(tr_f, tr_m, va_f, va_m, num_classes, k=5, temperature=0.1,
                            image_batch=1, query_chunk=3, memory_chunk=7)
    keep = va_m != 255
    cm = np.zeros((3, 3), int)
    for gt_v, p in zip(va_m[keep].tolist(), ref[keep].tolist()):
        cm[gt_v, p] += 1
    np.testing.assert_array_equal(res['confusion'], cm)
    assert res['memory_entries'] == 36


def test_nn_retrieval_hand_case_perfect_and_memory_cap():
    # memory patches carry their class as a one-hot feature: every query finds its own class
    num_classes = 3
    masks = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]]])
    cls = torch.tensor([[[0, 1], [2, 0]]])
    feats = F.one_hot(cls, num_classes).permute(0, 3, 1, 2).float()
    res = nn_retrieval_eval(feats, masks, feats, masks, num_classes, k=2, temperature=0.02)
    assert res['mIoU'] == pytest.approx(1.0) and res['pixel_acc'] == pytest.approx(1.0)
    # a cap of 2 keeps 2 of the 4 patches of the single memory image
    capped = nn_retrieval_eval(feats, masks, feats, masks, num_classes, memory_size=2, k=1)
    assert capped['memory_entries'] == 2


def test_build_memory_bank_streams_like_cached():
    g = torch.Generator().manual_seed(5)
    images = torch.rand(5, 3, 8, 8, generator=g) * 255
    masks = torch.randint(0, 2, (5, 8, 8), generator=g)
    proj = torch.randn(4, 3, generator=g)

    def extract(x):
        return torch.einsum('dc,bchw->bdhw', proj, F.avg_pool2d(x, 2))

    mf, ml = build_memory_bank(extract, (images, masks), per_image=3, seed=7, batch_size=2)
    ref_f, ref_l = sample_memory_patches(extract(images), masks, 3,
                                         torch.Generator().manual_seed(7))
    torch.testing.assert_close(mf, ref_f)
    assert torch.equal(ml, ref_l) and mf.shape == (15, 4)
    half, _ = build_memory_bank(extract, (images, masks), per_image=3, seed=7,
                                dtype=torch.float16)
    assert half.dtype == torch.float16
    with pytest.raises(ValueError, match='no labelled patch'):
        build_memory_bank(extract, (images, torch.full_like(masks, 255)), per_image=None)


def test_dense_nn_retrieval_streamed_equals_cached():
    g = torch.Generator().manual_seed(6)
    proj = torch.randn(4, 3, generator=g)

    def extract(x):
        return torch.einsum('dc,bchw->bdhw', proj, F.avg_pool2d(x, 4))

    tr = (torch.rand(6, 3, 16, 16, generator=g) * 255,
          torch.randint(0, 3, (6, 16, 16), generator=g))
    va = (torch.rand(3, 3, 16, 16, generator=g) * 255,
          torch.randint(0, 3, (3, 16, 16), generator=g))
    got = dense_nn_retrieval(extract, tr, va, 3, per_image=5, k=4, temperature=0.1, seed=2,
                             batch_size=4)
    ref = nn_retrieval_eval(extract(tr[0]), tr[1], extract(va[0]), va[1], 3, memory_size=30, k=4,
                            temperature=0.1, seed=2)
    np.testing.assert_array_equal(got['confusion'], ref['confusion'])
    assert got['memory_entries'] == ref['memory_entries'] == 30

import math

import pytest
import torch
from torchvision.ops import roi_align

import cotap_mm  # noqa: F401
from cotap_mm.models.losses import PatchClusterLoss
from mmpretrain.registry import MODELS

K = 5
SIZES = [(64, 64), (64, 64), (32, 32)]  # 2 global crops (8 x 8 maps), 1 local (4 x 4)
BOXES = torch.tensor([
    [[0., 0., 64., 64.], [16., 16., 96., 96.], [20., 20., 50., 50.]],  # all pairs overlap
    [[0., 0., 40., 40.], [30., 30., 96., 96.], [60., 60., 90., 90.]],  # crops 0 and 2 disjoint
])


def _ce(q, s, T):
    z = [v / T for v in s]
    lse = math.log(sum(math.exp(v) for v in z))
    return -sum(qk * (zk - lse) for qk, zk in zip(q, z))


def _constant_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.softmax(torch.randn(2, 2, K, generator=g) * 2, -1)  # [G, B, K] one code per crop
    s = torch.randn(3, 2, K, generator=g)  # [V, B, K] one student score vector per crop
    codes = q[..., None, None].expand(2, 2, K, 8, 8).clone()
    maps = [s[c][..., None, None].expand(2, K, *((8, 8) if c < 2 else (4, 4))).clone()
            .requires_grad_(True) for c in range(3)]
    return q, s, codes, maps


def test_constant_maps_match_pairwise_reference():
    q, s, codes, maps = _constant_inputs()
    fg = torch.ones(2, 2, 8, 8)
    valid = [(t, c, b) for t in range(2) for c in range(3) for b in range(2)
             if c != t and not (b == 1 and {t, c} == {0, 2})]
    pairs = [(t, c) for t in range(2) for c in range(3) if c != t]

    def pair_ref(valid):  # per (t, c) pair: mean over its images' cells, then mean over pairs
        per = []
        for t, c in pairs:
            vals = [_ce(q[t, b].tolist(), s[c, b].tolist(), 0.1) for tt, cc, b in valid
                    if (tt, cc) == (t, c)]
            per.append(sum(vals) / max(len(vals), 1))
        return sum(per) / len(pairs)

    def cell_ref(valid):
        return sum(_ce(q[t, b].tolist(), s[c, b].tolist(), 0.1) for t, c, b in valid) / len(valid)

    for reduction, ref in (('pair', pair_ref), ('cell', cell_ref)):
        loss = PatchClusterLoss(student_temp=0.1, reduction=reduction)
        out = loss(maps, codes, fg, BOXES, SIZES)
        assert out.item() == pytest.approx(ref(valid), rel=1e-5), reduction
        # teacher background: crop 0 of image 0 has no foreground -> its cells drop out
        fg0 = fg.clone()
        fg0[0, 0] = 0
        out = loss(maps, codes, fg0, BOXES, SIZES)
        kept = [v for v in valid if not (v[0] == 0 and v[2] == 0)]
        assert out.item() == pytest.approx(ref(kept), rel=1e-5), reduction
        # no foreground at all: zero, still differentiable
        out = loss(maps, codes, torch.zeros(2, 2, 8, 8), BOXES, SIZES)
        assert out.item() == 0.0 and out.requires_grad
    assert pair_ref(valid) != pytest.approx(cell_ref(valid), rel=1e-3)  # the two differ here
    out = PatchClusterLoss()(maps, codes, fg, BOXES, SIZES)
    out.backward()
    assert all(m.grad.abs().sum() > 0 for m in maps)


def _released_patch_cluster(codes, fg, student_maps, boxes, sizes, T, patch, roi=6):
    """Independent port of the released Leopart-style term: per teacher crop t and other crop v,
    RoI-align (aligned=True) codes / foreground of t and scores of v over their overlap, keep
    fully-foreground cells, CE summed over kept cells / max(count, 1); sum over v / (V - 1); mean
    over t. Overlap boxes are computed here from the image boxes (no flips)."""
    G, B = codes.shape[:2]
    V = len(student_maps)
    total = 0.0
    for t in range(G):
        sub = 0.0
        for v in range(V):
            if v == t:
                continue
            bt, bv = [], []
            for b in range(B):
                x1 = max(boxes[b, t, 0], boxes[b, v, 0])
                y1 = max(boxes[b, t, 1], boxes[b, v, 1])
                x2 = min(boxes[b, t, 2], boxes[b, v, 2])
                y2 = min(boxes[b, t, 3], boxes[b, v, 3])

                def to_crop(c):  # image coords -> token coords of crop c
                    sx = sizes[c][1] / float(boxes[b, c, 2] - boxes[b, c, 0])
                    sy = sizes[c][0] / float(boxes[b, c, 3] - boxes[b, c, 1])
                    return torch.tensor([[(x1 - boxes[b, c, 0]) * sx, (y1 - boxes[b, c, 1]) * sy,
                                          (x2 - boxes[b, c, 0]) * sx,
                                          (y2 - boxes[b, c, 1]) * sy]]) / patch

                bt.append(to_crop(t))
                bv.append(to_crop(v))
            q = roi_align(codes[t], bt, roi, aligned=True)
            keep = (roi_align(fg[t][:, None].float(), bt, roi, aligned=True)[:, 0]
                    >= 1.0 - 1e-6).float()
            out = roi_align(student_maps[v], bv, roi, aligned=True)
            ce = -(q * torch.log_softmax(out / T, dim=1)).sum(dim=1)
            sub = sub + (ce * keep).sum() / keep.sum().clamp(min=1)
        total = total + sub / (V - 1)
    return total / G


def test_matches_released_patch_cluster_term():
    g = torch.Generator().manual_seed(3)
    B, K_ = 3, 7
    codes = torch.softmax(torch.randn(2, B, K_, 8, 8, generator=g) * 3, dim=2)
    fg = torch.zeros(2, B, 8, 8)
    fg[:, :, 1:7, 2:8] = 1  # large fully-foreground blocks, plus some scattered cells
    fg = torch.maximum(fg, (torch.rand(2, B, 8, 8, generator=g) > 0.8).float())
    sizes = [(64, 64), (64, 64), (32, 32), (32, 32)]
    maps = [torch.randn(B, K_, h // 8, w // 8, generator=g).requires_grad_(True)
            for h, w in sizes]
    boxes = torch.tensor([[[0., 0., 80., 80.], [10., 12., 96., 90.], [20., 20., 50., 52.],
                           [40., 30., 70., 64.]]] * B)
    boxes[1] += 3.0
    boxes[2, :, 2:] -= 4.0
    ref = _released_patch_cluster(codes, fg, maps, boxes, sizes, T=0.1, patch=8)
    out = PatchClusterLoss(student_temp=0.1, roi_size=6)(maps, codes, fg, boxes, sizes)
    assert out.item() == pytest.approx(ref.item(), rel=1e-5)
    g_out = torch.autograd.grad(out, maps)
    g_ref = torch.autograd.grad(_released_patch_cluster(codes, fg, maps, boxes, sizes, 0.1, 8),
                                maps)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # the former defaults (any cell at least half foreground, one mean over all cells) differ
    old = PatchClusterLoss(fg_threshold=0.5, reduction='cell')(maps, codes, fg, boxes, sizes)
    assert abs(old.item() - ref.item()) > 1e-3


def test_background_codes_do_not_dilute_targets():
    # foreground in the left half only; background cells carry zero codes (as CoTAP builds them):
    # counted cells (pooled fg >= 0.5) must have the foreground code as target
    g = torch.Generator().manual_seed(1)
    q = torch.softmax(torch.randn(K, generator=g) * 2, -1)
    s = torch.randn(K, generator=g)
    fg = torch.zeros(1, 1, 8, 8)
    fg[..., :4] = 1
    codes = q[None, None, :, None, None] * fg[:, :, None]
    maps = [s[None, :, None, None].expand(1, K, 8, 8), s[None, :, None, None].expand(1, K, 4, 4)]
    boxes = torch.tensor([[[0., 0., 64., 64.], [0., 0., 64., 64.]]])
    out = PatchClusterLoss()(maps, codes, fg, boxes, [(64, 64), (32, 32)])
    assert out.item() == pytest.approx(_ce(q.tolist(), s.tolist(), 0.1), rel=1e-5)
    # threshold 1.0 keeps fewer cells but the same per-cell value; threshold > any mass: zero
    out_strict = PatchClusterLoss(fg_threshold=1.0)(maps, codes, fg, boxes, [(64, 64), (32, 32)])
    assert out_strict.item() == pytest.approx(out.item(), rel=1e-5)


def test_flips_and_alignment_matter():
    # a left/right code pattern: an unflipped student copy predicting it aligned beats misaligned
    fg = torch.ones(1, 1, 8, 8)
    left, right = torch.tensor([1., 0, 0, 0, 0]), torch.tensor([0., 1, 0, 0, 0])
    codes = torch.where(torch.arange(8)[None, :] < 4, 1.0, 0.0)  # [8, 8] broadcast over rows
    codes = (codes[None] * left[:, None, None] + (1 - codes[None]) * right[:, None, None])
    codes = codes[None, None].expand(1, 1, K, 8, 8)
    logits = codes[0, 0] * 10  # student = the same pattern
    boxes = torch.tensor([[[0., 0., 64., 64.], [0., 0., 64., 64.]]])
    sizes = [(64, 64), (64, 64)]
    loss = PatchClusterLoss()
    aligned = loss([logits[None], logits[None]], codes, fg, boxes, sizes)
    mirrored = logits.flip(-1)[None]  # a flipped crop of the same region
    wrong = loss([logits[None], mirrored], codes, fg, boxes, sizes)
    fixed = loss([logits[None], mirrored], codes, fg, boxes, sizes,
                 crop_flips=torch.tensor([[False, True]]))
    assert aligned < wrong
    assert fixed.item() == pytest.approx(aligned.item(), rel=1e-5)


def test_registry_weight_and_errors():
    loss = MODELS.build(dict(type='PatchClusterLoss', loss_weight=0.5))
    q, s, codes, maps = _constant_inputs()
    fg = torch.ones(2, 2, 8, 8)
    full = PatchClusterLoss()(maps, codes, fg, BOXES, SIZES)
    assert loss(maps, codes, fg, BOXES, SIZES).item() == pytest.approx(0.5 * full.item())
    codes.requires_grad_(True)
    PatchClusterLoss()(maps, codes, fg, BOXES, SIZES).backward()
    assert codes.grad is None
    with pytest.raises(ValueError, match='teacher_fg'):
        loss(maps, codes, fg[:1], BOXES, SIZES)
    with pytest.raises(ValueError, match='student_maps'):
        loss([m[:, :3] for m in maps], codes, fg, BOXES, SIZES)
    with pytest.raises(ValueError, match='fg_threshold'):
        PatchClusterLoss(fg_threshold=1.5)
    with pytest.raises(ValueError, match='reduction'):
        PatchClusterLoss(reduction='mean')
    with pytest.raises(ValueError, match='roi_size'):
        PatchClusterLoss(roi_size=0)

import numpy as np
import pytest
import torch
from mmpretrain.models.utils import resize_pos_embed
from mmpretrain.structures import DataSample

from cotap_mm.models.backbones.cotap_vit import CoTAPViT
from cotap_mm.models.backbones.token_edits import (apply_mask_token, foreign_index,
                                                   substitute_tokens)
from cotap_mm.models.utils.decoupling import (DecouplingBranch, masks_from_data_samples,
                                              plan_decoupling)
from cotap_mm.models.utils.depositioning import (DepositioningBranch, paste_regions,
                                                 sample_depositioning_boxes)
from cotap_mm.models.utils.region_pooling import box_pool_tokens
from cotap_mm.structures.boxes import boxes_to_grid
from cotap_mm.models.losses.ibot_patch_loss import IBOTPatchLoss


def embed_with_edits(vit, x, replace=None, donor_index=None, mim_mask=None, mask_token=None):
    """The embedding and token edits of :meth:`CoTAPViT.forward_tokens` (same order)."""
    tokens, hw = vit.embed(x)
    if replace is not None:
        tokens = substitute_tokens(tokens, replace, donor_index, vit.num_extra_tokens)
    if mim_mask is not None:
        tokens = apply_mask_token(vit, tokens, mim_mask, mask_token, hw)
    return tokens, hw


def forward_pre_last_with_edits(vit, x, **edits):
    out = vit.forward_tokens(x, stop_before_last=True, **edits)
    return out.tokens, out.hw


def _vit(pre_norm=False):
    torch.manual_seed(0)
    vit = CoTAPViT(arch=dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64),
                   img_size=32, patch_size=8, pre_norm=pre_norm)
    vit.init_weights()
    with torch.no_grad():  # a non-trivial position embedding
        vit.pos_embed.normal_()
    vit.eval()  # mmpretrain's VisionTransformer.train() returns None
    return vit


def _masks(G, B, N, seed=0, p=0.4):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(G, B, N, generator=g) < p


# ----------------------------------------------------------------------------- decoupling plan
def test_foreign_index_is_reversed_batch_and_never_self():
    src = torch.arange(7)
    don = foreign_index(src, 7)
    assert don.tolist() == [6, 5, 4, 4, 2, 1, 0]  # middle row 3 -> (3 + 1) % 7
    assert not bool((don == src).any())
    with pytest.raises(ValueError, match='at least 2'):
        foreign_index(torch.tensor([0]), 1)


@pytest.mark.parametrize('B,n', [(8, 1), (64, 8), (13, 1), (3, 0)])
def test_plan_decoupling_counts_and_masks(B, n):
    G, N = 2, 16
    masks = _masks(G, B, N)
    masks[0, 0] = False  # an empty mask is skipped by the pool
    plan = plan_decoupling(masks, 0.25)
    if n == 0:
        assert plan is None
        return
    E = 2 * n
    assert plan.source_index.tolist() == list(range(B - E, B))
    assert plan.donor_index.tolist() == [B - 1 - s for s in range(B - E, B)]
    pool = [m for m in masks.reshape(G * B, N) if m.any()]
    for g in range(G):
        for k in range(E):
            m = pool[g * E + k]
            expect = m if k < n else ~m
            assert torch.equal(plan.replace[g, k], expect)


def test_plan_decoupling_limited_by_pool():
    masks = torch.zeros(2, 16, 9, dtype=torch.bool)
    assert plan_decoupling(masks, 0.25) is None
    masks[0, :4, 0] = True  # only 4 non-empty masks: n = 4 // (2 * 2) = 1
    plan = plan_decoupling(masks, 0.25)
    assert plan.replace.shape == (2, 2, 9)
    with pytest.raises(ValueError, match='sample_ratio'):
        plan_decoupling(masks, 1.5)


# ----------------------------------------------------------------------------- token edits
def test_substitute_tokens_only_where_the_mask_says():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(4, 1 + 6, 5, generator=g, requires_grad=True)
    replace = torch.zeros(4, 6, dtype=torch.bool)
    replace[2, [0, 3, 4]] = True
    donor = torch.tensor([0, 1, 1, 3])
    out = substitute_tokens(tokens, replace, donor)
    for r in range(4):
        assert torch.equal(out[r, 0], tokens[r, 0])  # CLS never replaced
        for n in range(6):
            src = tokens[donor[r], 1 + n] if replace[r, n] else tokens[r, 1 + n]
            assert torch.equal(out[r, 1 + n], src)
    # gradients: the replaced positions of row 2 get none, the donor (detached) gets none
    # through them; everything else gets the identity gradient
    w = torch.randn(out.shape, generator=g)
    (out * w).sum().backward()
    grad = tokens.grad
    for n in range(6):
        expect = torch.zeros(5) if replace[2, n] else w[2, 1 + n]
        assert torch.equal(grad[2, 1 + n], expect)
    assert torch.equal(grad[1], w[1])


def test_embed_with_edits_equals_editing_before_the_position_embedding():
    vit = _vit(pre_norm=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 32, 32, generator=g)
    replace = torch.rand(4, 16, generator=g) < 0.3
    replace[0] = False
    donor = torch.tensor([0, 3, 0, 1])
    mim = (torch.rand(4, 16, generator=g) < 0.3) & ~replace
    mask_token = torch.randn(1, 32, generator=g)
    got, hw = embed_with_edits(vit, x, replace, donor, mim, mask_token)

    # reference in the official order: patch_embed -> foreign tokens / mask token -> CLS, pos
    with torch.no_grad():
        patches, res = vit.patch_embed(x)
        edited = patches.clone()
        for r in range(4):
            for n in range(16):
                if replace[r, n]:
                    edited[r, n] = patches[donor[r], n]
                elif mim[r, n]:
                    edited[r, n] = mask_token[0]
        ref = torch.cat([vit.cls_token.expand(4, -1, -1), edited], dim=1)
        ref = ref + resize_pos_embed(vit.pos_embed, vit.patch_resolution, res,
                                     mode=vit.interpolate_mode, num_extra_tokens=1)
        ref = vit.pre_norm(ref)
    assert hw == (4, 4)
    assert torch.allclose(got, ref, atol=1e-5)


def test_forward_pre_last_with_edits_and_mask_stacking():
    vit = _vit()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 3, 32, 32, generator=g)
    with torch.no_grad():
        ref, hw = vit.forward_pre_last(x)
        got, hw2 = forward_pre_last_with_edits(vit, x)
        assert hw == hw2 and torch.allclose(got, ref)
        replace = torch.zeros(3, 16, dtype=torch.bool)
        replace[1, 5] = True
        edited, _ = forward_pre_last_with_edits(vit, x, replace=replace,
                                                donor_index=torch.tensor([0, 2, 2]))
        tok, _ = embed_with_edits(vit, x, replace, torch.tensor([0, 2, 2]))
        for layer in vit.layers[:-1]:
            tok = layer(tok)
        assert torch.allclose(edited, tok) and not torch.allclose(edited[1], ref[1])
        assert torch.allclose(edited[[0, 2]], ref[[0, 2]])

    samples = []
    for b in range(3):
        ds = DataSample()
        ds.set_field(np.full((2, 2, 3), b % 2 == 1), 'rcc_mask')
        samples.append(ds)
    masks = masks_from_data_samples(samples, 'rcc_mask', 2)
    assert masks.shape == (2, 3, 6) and masks[:, 1].all() and not masks[:, 0].any()
    samples[2].set_field(np.zeros((2, 3, 3), bool), 'rcc_mask')
    with pytest.raises(ValueError, match=r'rcc_mask must be \[>= 2, 2, 3\]'):
        masks_from_data_samples(samples, 'rcc_mask', 2)
    with pytest.raises(KeyError, match='RegionCollaborativeCutout'):
        masks_from_data_samples([DataSample()], 'rcc_mask', 2)


def test_pixels_under_substituted_tokens_get_no_gradient():
    vit = _vit()
    B, G, N = 8, 1, 16
    g = torch.Generator().manual_seed(2)
    view = torch.randn(B, 3, 32, 32, generator=g)
    masks = _masks(G, B, N, seed=3, p=0.5)
    masks[:, :, 0] = True
    dc = DecouplingBranch(prob=0.25, loss_weight=0.3)
    batch = dc.build([view], masks)
    assert batch.num_extra == 2 and batch.images.shape[0] == B + 2
    x = batch.images.clone().requires_grad_(True)
    tokens, _ = embed_with_edits(vit, x, batch.replace, batch.donor_index)
    for layer in vit.layers:
        tokens = layer(tokens)
    tokens.sum().backward()
    for k in range(2):
        row = B + k
        for n in range(N):
            i, j = divmod(n, 4)
            patch_grad = x.grad[row, :, 8 * i:8 * i + 8, 8 * j:8 * j + 8]
            if batch.replace[row, n]:
                assert torch.all(patch_grad == 0)
            else:
                assert patch_grad.abs().sum() > 0
        # the extra row is a duplicate of its source image
        assert torch.equal(batch.images[row], view[batch.plan.source_index[k]])


def test_decoupling_loss_only_on_kept_tokens():
    G, B, N, K = 2, 8, 9, 6
    masks = _masks(G, B, N, seed=4, p=0.5)
    masks[:, :, 4] = True
    dc = DecouplingBranch(prob=0.5, loss_weight=0.3)
    batch = dc.build([torch.zeros(B, 3, 24, 24)] * G, masks)
    E = batch.num_extra
    assert E == 4
    g = torch.Generator().manual_seed(5)
    s_rows = torch.randn(G * (B + E), N, K, generator=g, requires_grad=True)
    teacher = torch.randn(G, B, N, K, generator=g)
    normal, extra = dc.split(s_rows, batch)
    assert normal.shape == (G, B, N, K) and extra.shape == (G, E, N, K)
    patch_loss = IBOTPatchLoss(out_dim=K)
    loss = dc.loss(patch_loss.cross_entropy, extra, teacher, batch)
    keep = ~batch.plan.replace
    ref = 0.3 * patch_loss.cross_entropy(extra, teacher[:, batch.plan.source_index], keep)
    assert torch.allclose(loss, ref)
    loss.backward()
    grad_extra = s_rows.grad[G * B:].reshape(G, E, N, K)
    assert torch.all(grad_extra[~keep] == 0) and torch.all(grad_extra[keep].abs().sum(-1) > 0)
    assert torch.all(s_rows.grad[:G * B] == 0)  # normal rows are not part of the term
    # teacher targets at replaced positions (or of other images) do not matter
    teacher2 = teacher.clone()
    for g_ in range(G):
        for k, s in enumerate(batch.plan.source_index.tolist()):
            teacher2[g_, s][~keep[g_, k]] = 50.0
    teacher2[:, 0] = -7.0
    assert torch.allclose(dc.loss(patch_loss.cross_entropy, extra, teacher2, batch), loss)


# ----------------------------------------------------------------------------- de-positioning
def test_box_pool_tokens_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    h, w, C = 5, 6, 3
    tokens = torch.randn(3, h * w, C, generator=g)
    boxes = torch.tensor([[1, 2, 4, 5], [0, 0, 6, 5], [2.5, 0.5, 3.25, 4.0]])
    got = box_pool_tokens(tokens, (h, w), boxes)
    grid = tokens.reshape(3, h, w, C)
    # integer boxes: plain mean
    assert torch.allclose(got[0], grid[0, 2:5, 1:4].reshape(-1, C).mean(0), atol=1e-6)
    assert torch.allclose(got[1], grid[1].reshape(-1, C).mean(0), atol=1e-6)
    # fractional box: overlap-area weighted mean, computed cell by cell
    x1, y1, x2, y2 = boxes[2].tolist()
    acc, tot = torch.zeros(C), 0.0
    for i in range(h):
        for j in range(w):
            a = max(0.0, min(i + 1, y2) - max(i, y1)) * max(0.0, min(j + 1, x2) - max(j, x1))
            acc += a * grid[2, i, j]
            tot += a
    assert torch.allclose(got[2], acc / tot, atol=1e-6)
    with pytest.raises(ValueError, match='boxes must be'):  # shapes are checked, values are not
        box_pool_tokens(tokens, (h, w), torch.tensor([[0, 0, 7, 2]] * 2))


def test_pasted_region_is_the_source_region_at_its_new_place():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 32, 32, generator=g)
    src = torch.tensor([[8, 0, 24, 16], [0, 8, 8, 32]])
    dst = torch.tensor([[16, 16, 32, 32], [24, 0, 32, 24]])
    source, donor = torch.tensor([1, 2]), torch.tensor([2, 1])
    out = paste_regions(images, src, dst, source, donor)
    for k in range(2):
        sx1, sy1, sx2, sy2 = src[k].tolist()
        dx1, dy1, dx2, dy2 = dst[k].tolist()
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[dy1:dy2, dx1:dx2] = True
        assert torch.equal(out[k, :, dy1:dy2, dx1:dx2], images[source[k], :, sy1:sy2, sx1:sx2])
        assert torch.equal(out[k][:, ~inside], images[donor[k]][:, ~inside])
    # the patch tokens (patch embedding, no position) pooled over the pasted box equal the source
    # tokens pooled over the source box: the region keeps its content at its new position
    vit = _vit()
    with torch.no_grad():
        t_out, _ = vit.patch_embed(out)
        t_src, _ = vit.patch_embed(images[source])
    pooled_dst = box_pool_tokens(t_out, (4, 4), dst // 8)
    pooled_src = box_pool_tokens(t_src, (4, 4), src // 8)
    assert torch.allclose(pooled_dst, pooled_src, atol=1e-5)
    # brute-force mean of the pasted tokens
    grid = t_out.reshape(2, 4, 4, -1)
    assert torch.allclose(pooled_dst[0], grid[0, 2:4, 2:4].reshape(-1, 32).mean(0), atol=1e-6)
    # a rescaled paste fills exactly the destination box
    out2 = paste_regions(images, src[:1], torch.tensor([[0, 0, 8, 8]]), source[:1], donor[:1])
    assert torch.equal(out2[0, :, 8:], images[donor[0], :, 8:])
    assert not torch.equal(out2[0, :, :8, :8], images[donor[0], :, :8, :8])


def test_depositioning_boxes_and_branch():
    src, dst = sample_depositioning_boxes((8, 8), 50, np.random.RandomState(0),
                                          scale=(0.5, 1.5))
    for (x1, y1, x2, y2), (a1, b1, a2, b2) in zip(src, dst):
        assert 0 <= x1 < x2 <= 8 and 0 <= y1 < y2 <= 8
        assert 0 <= a1 < a2 <= 8 and 0 <= b1 < b2 <= 8
        for s_side, d_side in ((x2 - x1, a2 - a1), (y2 - y1, b2 - b1)):
            assert round(0.5 * s_side) - 1 <= d_side <= min(8, round(1.5 * s_side) + 1)
    again = sample_depositioning_boxes((8, 8), 50, np.random.RandomState(0), scale=(0.5, 1.5))
    assert np.array_equal(src, again[0]) and np.array_equal(dst, again[1])

    assert boxes_to_grid(torch.tensor([[3., 9., 17., 16.], [60., 60., 64., 64.]]), 8,
                         (8, 8)).tolist() == [[0, 1, 3, 2], [7, 7, 8, 8]]

    g = torch.Generator().manual_seed(0)
    view = torch.randn(8, 3, 64, 64, generator=g)
    branch = DepositioningBranch(prob=0.5, seed=0)
    dp = branch.build(view, (8, 8))
    assert dp.images.shape == (4, 3, 64, 64)
    assert not bool((dp.source_index == dp.donor_index).any())
    ref = paste_regions(view, dp.src_boxes * 8, dp.dst_boxes * 8, dp.source_index,
                        dp.donor_index)
    assert torch.equal(dp.images, ref)
    assert DepositioningBranch(prob=0.1).build(view, (8, 8)) is None  # floor(0.8) = 0

    # object boxes from the data samples instead of random boxes
    samples = []
    for _ in range(8):
        ds = DataSample()
        ds.set_field(torch.tensor([[[8., 16., 40., 32.], [0., 0., 0., 0.]]]), 'obj_boxes')
        samples.append(ds)
    branch = DepositioningBranch(prob=0.5, box_key='obj_boxes', seed=1)
    dp = branch.build(view, (8, 8), 0, samples)
    assert dp.src_boxes.tolist() == [[1, 2, 5, 4]] * 4
    with pytest.raises(ValueError, match='scale'):
        DepositioningBranch(scale=(0.0, 1.0))

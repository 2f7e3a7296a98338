"""CoTAP with the de-coupling / de-positioning options (arXiv 2303.16947 + ICLR-24 successor)."""
import math
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

import cotap_mm  # noqa: F401
from cotap_mm.datasets.transforms.region_cutout import region_cutout_mask
from cotap_mm.models.algorithms.cotap import kept_code_cross_entropy, region_code_targets
from cotap_mm.models.algorithms.cotap.step import CoTAPTerm
from cotap_test_helpers.tool_runs import logged_loss_rows, train_in_process
from cotap_test_helpers.view_batches import geometric_view_batch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))))
TINY = osp.join(REPO, 'configs/cotap/cotap_vit-tiny-p8_1xb8-demo_synthetic.py')
DDSSL = osp.join(REPO, 'configs/cotap/cotap-ddssl_vit-tiny-p8_1xb8-demo_synthetic.py')
BASE_KEYS = {'loss_cotap', 'loss_patch_cluster', 'loss_cls_cluster', 'loss_cls_neighbor',
             'loss_proto_entropy'}
SMALL = dict(bank_size=16, bank_samples_per_step=8, kmeans_iters=5)
ON = dict(decoupling=dict(prob=0.5, loss_weight=0.3),
          depositioning=dict(prob=0.5, loss_weight=0.3, seed=0))


def _build(**overrides):
    cfg = Config.fromfile(TINY)
    cfg.model.update(SMALL)
    cfg.model.update(overrides)
    torch.manual_seed(0)
    return MODELS.build(cfg.model)


def _batch(B=4, G=2, L=2, size=64, local=32, seed=0, ratio=0.4):
    """Student views (G global + L local), clean teacher globals, samples with crop geometry and
    one RCC mask per global crop (fixed cut ratio: every mask non-empty)."""
    rng = np.random.RandomState(seed)

    def add_rcc_masks(ds: DataSample) -> None:
        masks = np.stack([region_cutout_mask(size // 8, rng, ratio=ratio) for _ in range(G)])
        ds.set_field(torch.from_numpy(masks), 'rcc_mask')

    return geometric_view_batch(B, G, L, size, local, seed, noise=0.3, add_fields=add_rcc_masks)


def _losses(model, inputs, samples, seed=0):
    torch.manual_seed(seed)  # loss_cotap's random items, the bank's random picks
    return model.loss(inputs, samples)


# ----------------------------------------------------------------------------- pure functions
def test_kept_code_cross_entropy_and_region_targets_match_loops():
    g = torch.Generator().manual_seed(0)
    R, h, w, K = 3, 4, 5, 6
    N = h * w
    scores = torch.randn(R, N, K, generator=g)
    codes = torch.softmax(torch.randn(R, N, K, generator=g), dim=-1)
    fg = torch.rand(R, N, generator=g) < 0.6
    fg[1, [6, 7, 11]] = False  # box 1 (cells 6, 7, 11, 12): at most 1/4 foreground
    fg[2, 19] = False  # box 2: a single background cell
    fg[0, :10] = True  # box 0 (cells 0..4, 5..9, 10..14, 15..19): >= 1/2 foreground
    codes = codes * fg[..., None]  # zero codes on background, as CoTAP's
    keep = torch.rand(R, N, generator=g) < 0.7
    got = kept_code_cross_entropy(scores, codes, keep, temperature=0.2)
    tot, cnt = 0.0, 0
    for r in range(R):
        for n in range(N):
            if keep[r, n] and fg[r, n]:
                tot += -(codes[r, n] * F.log_softmax(scores[r, n] / 0.2, dim=-1)).sum().item()
                cnt += 1
    assert got.item() == pytest.approx(tot / cnt, rel=1e-5)
    with pytest.raises(ValueError, match='weights'):
        kept_code_cross_entropy(scores, codes, keep[:, :3])

    boxes = torch.tensor([[0, 0, 5, 4], [1, 1, 3, 3], [4, 3, 5, 4]])
    fgf = fg.float()
    got = region_code_targets(codes, fg, (h, w), boxes, fg_threshold=0.5)
    assert got[0].sum() > 0 and torch.all(got[1:] == 0)
    for r in range(R):
        x1, y1, x2, y2 = boxes[r].tolist()
        cells = [i * w + j for i in range(y1, y2) for j in range(x1, x2)]
        frac = fgf[r, cells].mean().item()
        if frac < 0.5:
            assert torch.all(got[r] == 0), r
        else:
            ref = codes[r, cells].sum(0)
            assert torch.allclose(got[r], ref / ref.sum(), atol=1e-6), r


# ----------------------------------------------------------------------------- the algorithm
def test_options_off_and_empty_options_give_the_plain_losses_exactly():
    inputs, samples = _batch()
    plain = _build()
    assert plain.decoupling is None and plain.depositioning is None and plain.dense_loss is None
    # options on but no extra row (prob 0): the edited forward equals the plain one bit for bit
    empty = _build(decoupling=dict(prob=0.0), depositioning=dict(prob=0.0))
    assert set(plain.state_dict()) == set(empty.state_dict())  # no new weights / buffers
    for step in range(2):  # step 1: the clustering terms are on
        a = _losses(plain, inputs, samples, step)
        b = _losses(empty, inputs, samples, step)
        logged = {'patch_code_entropy', 'cls_code_entropy'} if step else set()  # Sinkhorn on
        assert set(a) == BASE_KEYS | logged
        assert set(b) == BASE_KEYS | logged | {'loss_dc', 'loss_depos'}
        for k in BASE_KEYS:
            assert torch.equal(a[k], b[k]), (step, k)
        assert b['loss_dc'].item() == 0.0 and b['loss_depos'].item() == 0.0


@pytest.mark.parametrize('dense_loss', [None, dict(type='IBOTPatchLoss')])
def test_extra_rows_leave_the_normal_terms_unchanged(dense_loss):
    inputs, samples = _batch()
    plain = _build().eval()
    model = _build(dense_loss=dense_loss, **ON).eval()
    if dense_loss is not None:
        assert model.dense_loss.out_dim == model.patch_head.num_prototypes
    for step in range(2):
        a = _losses(plain, inputs, samples, step)
        b = _losses(model, inputs, samples, step)
        assert set(b) == set(a) | {'loss_dc', 'loss_depos'}
        for k in a:
            assert b[k].item() == pytest.approx(a[k].item(), rel=1e-5, abs=1e-6), (step, k)
        assert torch.isfinite(b['loss_dc']) and torch.isfinite(b['loss_depos'])
        if dense_loss is not None or step == 1:  # the codes exist from cluster_start_iter on
            assert b['loss_dc'].item() > 0
    # the queues / bank saw the normal rows only
    torch.testing.assert_close(model.patch_queue.ordered(), plain.patch_queue.ordered())
    torch.testing.assert_close(model.proto_bank.ordered(), plain.proto_bank.ordered())


def test_loss_dc_gradient_skips_substituted_pixels_and_teacher():
    B, G, E, n = 4, 2, 2, 1  # prob 0.5: n = floor(0.5 * 4) // 2 = 1, E = 2 extra rows per view
    inputs, samples = _batch(B=B)
    model = _build(decoupling=dict(prob=0.5, loss_weight=0.3), cluster_start_iter=0)
    step = _record_step(model)
    views = [x.clone().requires_grad_(True) for x in inputs[:G]]
    losses = model.loss(views + inputs[G:], samples)
    assert losses['loss_dc'].item() > 0
    losses['loss_dc'].backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.patch_head.weight_v.grad.abs().sum() > 0
    assert model.cls_head.weight_v.grad is None  # no CLS term for the de-coupling rows

    # reference plan: pool = non-empty masks view-major; rows B-E.. of view g replace pool[g*E+k]
    # (k < n) or its complement; donors (reverse batch order) are detached
    pool = [samples[b].rcc_mask[v].reshape(-1) for v in range(G) for b in range(B)]
    for g in range(G):
        grad = views[g].grad
        for b in range(B - E):  # normal rows and donors: not part of loss_dc
            assert torch.all(grad[b] == 0), (g, b)
        for k in range(E):
            src = B - E + k
            replace = pool[g * E + k] if k < n else ~pool[g * E + k]
            assert replace.any() and (~replace).any()
            for p in range(64):
                i, j = divmod(p, 8)
                patch = grad[src, :, 8 * i:8 * i + 8, 8 * j:8 * j + 8]
                if replace[p]:
                    assert torch.all(patch == 0), (g, k, p)
            kept = [p for p in range(64) if not replace[p]]
            assert sum(grad[src, :, 8 * (p // 8):8 * (p // 8) + 8,
                            8 * (p % 8):8 * (p % 8) + 8].abs().sum() for p in kept) > 0

    # value: 0.3 x mean over (view, extra row, kept foreground token) of the
    # cross-entropy of the row's student patch-head scores against the clean-view code of its
    # source image at the same position (student temperature of patch_cluster_loss)
    codes = step['step'].patch_codes  # [G, B, K, 8, 8], on every patch
    fg = step['step'].fg.reshape(G, B, 8, 8)  # teacher foreground
    with torch.no_grad():
        dc_patch = step['step'].extra_patch[:G * E].reshape(G, E, 64, -1)
        scores = model.patch_head(dc_patch)  # [G, E, 64, K]
    T = model.patch_cluster_loss.student_temp
    tot, cnt = 0.0, 0
    for g in range(G):
        for k in range(E):
            replace = pool[g * E + k] if k < n else ~pool[g * E + k]
            for p in range(64):
                code = codes[g, B - E + k, :, p // 8, p % 8]
                if not replace[p] and fg[g, B - E + k, p // 8, p % 8] > 0:
                    tot -= (code * F.log_softmax(scores[g, k, p] / T, dim=-1)).sum().item()
                    cnt += 1
    assert cnt > 0
    assert losses['loss_dc'].item() == pytest.approx(0.3 * tot / cnt, rel=1e-5)


def test_only_patch_sources_feed_the_extra_rows():
    inputs, samples = _batch(B=8)
    sources = ['imagenet', 'coco', 'coco', 'imagenet', 'imagenet', 'coco', 'imagenet', 'coco']
    coco, imnet = [1, 2, 5, 7], [0, 3, 4, 6]
    for ds, s in zip(samples, sources):
        ds.set_field(s, 'source', field_type='metainfo')
    for i in imnet:  # ImageNet samples need no RCC masks
        del samples[i].rcc_mask
    model = _build(proto_loss=None, patch_queue=None, cls_queue=None, cluster_start_iter=0,
                   **ON)
    G = 2
    step = _record_step(model)
    with torch.no_grad():
        model.loss(inputs, samples)
    rows = step['step'].extra
    dc = rows.decoupling
    # de-coupling: sub-batch of 4 -> E = 2 duplicates of sub rows 2, 3 = batch rows 5, 7
    assert dc.batch_size == 4 and dc.num_extra == 2 == rows.num_extra
    assert dc.plan.source_index.tolist() == [2, 3]
    assert dc.plan.donor_index.tolist() == [1, 0]  # batch rows 2, 1: coco as well
    for g in range(G):
        extra = dc.images[G * 4 + 2 * g:G * 4 + 2 * g + 2]
        assert torch.equal(extra, inputs[g][[5, 7]])
        # the stacked rows: donors mapped back to the full batch (coco rows of the same view)
        donors = rows.donor_index[G * 8 + 2 * g:G * 8 + 2 * g + 2]
        assert donors.tolist() == [g * 8 + 2, g * 8 + 1]
    assert step['step'].extra_patch.shape[0] == G * 2 + sum(
        dp.images.shape[0] for _, _, dp in rows.depositioning)
    # de-positioning: floor(0.5 * 4) = 2 composites per view, sources and donors in the sub-batch
    assert len(rows.depositioning) == G
    for g, offset, dp in rows.depositioning:
        assert dp.images.shape[0] == 2 and offset >= G * (8 + 2)
        assert set(dp.source_index.tolist()) <= {0, 1, 2, 3}
        assert set(dp.donor_index.tolist()) <= {0, 1, 2, 3}

    views = [x.clone().requires_grad_(True) for x in inputs[:G]]
    losses = model.loss(views + inputs[G:], samples)
    (losses['loss_dc'] + losses['loss_depos']).backward()
    for g in range(G):
        assert torch.all(views[g].grad[imnet] == 0), g
        assert views[g].grad[coco].abs().sum() > 0, g
    # ImageNet pixels (also as donors) do not change loss_dc (no queue: deterministic codes)
    before = model.loss(inputs, samples)['loss_dc'].item()
    moved = [x.clone() for x in inputs]
    for x in moved[:G]:
        x[imnet] += 1.0
    assert model.loss(moved, samples)['loss_dc'].item() == pytest.approx(before, rel=1e-6)


def test_ibot_dense_loss_centre_steps_once_per_training_call():
    inputs, samples = _batch()
    model = _build(dense_loss=dict(type='IBOTPatchLoss', warmup_iters=10), **ON).train()
    losses = model.loss(inputs, samples)
    assert int(model.dense_loss.num_updates) == 1
    assert model.dense_loss.center.abs().sum() > 0
    assert losses['loss_dc'].item() > 0 and losses['loss_depos'].item() > 0
    model.eval()
    model.loss(inputs, samples)
    assert int(model.dense_loss.num_updates) == 1


def test_bad_configs_and_inputs():
    with pytest.raises(ValueError, match='patch_cluster_loss'):
        _build(patch_cluster_loss=None, **ON)
    _build(patch_cluster_loss=None, dense_loss=dict(type='IBOTPatchLoss'), **ON)  # fine
    with pytest.raises(TypeError, match='cross_entropy'):
        _build(dense_loss=dict(type='ClsClusterLoss'), **ON)
    with pytest.raises(ValueError, match='decoupling prob'):
        _build(decoupling=dict(prob=1.5))
    model = _build(**ON)
    inputs, samples = _batch()
    for ds in samples:
        del ds.rcc_mask
    with pytest.raises(KeyError, match='RegionCollaborativeCutout'):
        model.loss(inputs, samples)
    inputs, samples = _batch()
    samples[1].set_field(torch.zeros(2, 4, 4, dtype=torch.bool), 'rcc_mask')
    with pytest.raises(ValueError, match='rcc_mask'):
        model.loss(inputs, samples)


def test_ddssl_config_trains_with_tools_train(tmp_path):
    train_in_process([
        DDSSL, '--work-dir', str(tmp_path), '--cfg-options', 'train_cfg.max_iters=2',
        'default_hooks.logger.interval=1', 'model.bank_size=16', 'model.bank_samples_per_step=8'
    ])
    cfg = Config.fromfile(DDSSL)
    assert cfg.train_dataloader.batch_size == 8  # 25 % of 8: one masked + one complement row
    rows = logged_loss_rows(tmp_path)
    assert len(rows) == 2
    for r in rows:
        for key in ('loss', 'loss_dc', 'loss_depos') + tuple(BASE_KEYS):
            assert math.isfinite(r[key]), (key, r)
    # iteration 1: no codes yet (cluster_start_iter=1), the terms are 0; then both are on
    assert rows[0]['loss_dc'] == 0.0 and rows[0]['loss_depos'] == 0.0
    assert rows[1]['loss_dc'] > 0 and rows[1]['loss_depos'] > 0


def _record_step(model):
    """Append a term that keeps the :class:`CoTAPStep` of the model's last ``loss()`` call (it
    runs last, so the step holds what every other term added)."""
    out = {}

    class Recorder(CoTAPTerm):
        def enabled(self, m):
            return True

        def __call__(self, m, step):
            out['step'] = step
            return {}

    model.terms.append(Recorder())
    return out

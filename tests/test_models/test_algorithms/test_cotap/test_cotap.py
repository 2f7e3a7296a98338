import math
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

import cotap_mm  # noqa: F401
import cotap_mm.models.algorithms.cotap.step as step_module
import cotap_mm.models.algorithms.cotap.term_ranking as ranking_module
import cotap_mm.models.heads.dino_projection_head  # noqa: F401
import cotap_mm.models.losses.dino_cls_loss  # noqa: F401  (registers DINOClsLoss)
from cotap_mm.models.algorithms.base import ema_update_, paired_tensors
from cotap_mm.models.algorithms.cotap.step import find_partners, ranking_anchors
from cotap_mm.models.algorithms.cotap.term_ranking import ranking_loss
from cotap_mm.models.algorithms.cotap.term_prototypes import PrototypeTerm
from cotap_mm.models.algorithms.cotap.step import CoTAPStep
from cotap_test_helpers.tool_runs import logged_loss_rows, train_in_process
from cotap_test_helpers.view_batches import geometric_view_batch
from mmengine.config import Config
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))))
TINY = osp.join(REPO, 'configs/cotap/cotap_vit-tiny-p8_1xb8-demo_synthetic.py')
FULL_KEYS = {'loss_cotap', 'loss_patch_cluster', 'loss_cls_cluster', 'loss_cls_neighbor',
             'loss_proto_entropy'}
CLUSTER_KEYS = ('loss_patch_cluster', 'loss_cls_cluster', 'loss_cls_neighbor')
CODE_KEYS = {'patch_code_entropy', 'cls_code_entropy'}  # logged once Sinkhorn runs, not summed
NO_NEW_TERMS = dict(patch_cluster_loss=None, cls_cluster_loss=None, cls_neighbor_loss=None)


def _build(init_weights=False, **overrides):
    cfg = Config.fromfile(TINY)
    cfg.model.update(overrides)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    if init_weights:
        model.init_weights()
    return model


def _batch(B=4, G=2, L=2, size=64, local=32, seed=0, noise=0.3):
    return geometric_view_batch(B, G, L, size, local, seed, noise)


def test_builds_structure_and_state_dict():
    model = _build(init_weights=True)
    assert type(model).__name__ == 'CoTAP'
    keys = list(model.state_dict())
    assert any(k.startswith('backbone.') for k in keys)
    assert any(k.startswith('teacher.backbone.') for k in keys)
    assert not any(k.startswith('student.') for k in keys)  # no duplicated student keys
    assert 'teacher_initialized' in keys and 'proto_bank.queue' in keys and 'loss_iter' in keys
    for name in ('proto_bank', 'patch_queue', 'cls_queue'):
        for buf in ('queue', 'ptr', 'count'):
            assert f'{name}.{buf}' in keys
            assert f'{name}.{buf}' in model._ddp_params_and_buffers_to_ignore
    # demo config: 4096 / 512 vectors of the heads' 64-dim bottleneck (one process)
    assert model.patch_queue.queue.shape == (4096, 64) and model.cls_queue.queue.shape == (512, 64)
    assert model.patch_queue.max_per_step == 2048 and model.cls_queue.max_per_step == 100
    assert all(not p.requires_grad for p in model.teacher.parameters())
    # the EMA hook's view of the student
    student = model.get_submodule('student')
    assert student['backbone'] is model.backbone
    paired_tensors(model.teacher, student)  # same names and shapes
    for name in model._ddp_params_and_buffers_to_ignore:
        assert name in dict(model.named_buffers())
    # teacher starts equal to the student
    for (n, p), (_, q) in zip(student.named_parameters(), model.teacher.named_parameters()):
        torch.testing.assert_close(p, q)


def test_loss_finite_and_gradients():
    model = _build()
    inputs, samples = _batch()
    first = model.loss(inputs, samples)
    assert set(first) == FULL_KEYS
    # "queues / Sinkhorn only start after the first step": 0 on step 0, queues already filled
    for key in CLUSTER_KEYS:
        assert first[key].item() == 0.0 and first[key].requires_grad, key
    assert len(model.patch_queue) > 0 and len(model.cls_queue) == 2 * 4
    losses = model.loss(inputs, samples)
    assert set(losses) == FULL_KEYS | CODE_KEYS and int(model.loss_iter) == 2
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    for key in CLUSTER_KEYS:
        assert losses[key].item() > 0, key
    for key, k in (('patch_code_entropy', model.patch_head.num_prototypes),
                   ('cls_code_entropy', model.cls_head.num_prototypes)):
        assert 0 < losses[key].item() <= math.log(k) + 1e-4 and not losses[key].requires_grad

    # all terms: reach the backbone and heads, not the teacher, not the prototypes
    model.zero_grad()
    sum(v for k, v in losses.items() if k != 'loss_proto_entropy').backward()
    assert model.backbone.layers[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.backbone.layers[-1].ffn.layers[0][0].weight.grad.abs().sum() > 0
    assert model.patch_head.weight_v.grad.abs().sum() > 0
    assert model.cls_head.weight_v.grad.abs().sum() > 0
    assert model.neck.prototypes.grad is None
    assert all(p.grad is None for p in model.teacher.parameters())

    # each term alone reaches the backbone and its own head only
    heads = {'loss_cotap': 'patch_head', 'loss_patch_cluster': 'patch_head',
             'loss_cls_cluster': 'cls_head', 'loss_cls_neighbor': 'cls_head'}
    for key, head in heads.items():
        model.zero_grad()
        model.loss(inputs, samples)[key].backward()
        assert model.backbone.layers[0].attn.qkv.weight.grad.abs().sum() > 0, key
        assert getattr(model, head).weight_v.grad.abs().sum() > 0, key
        other = 'cls_head' if head == 'patch_head' else 'patch_head'
        grad = getattr(model, other).weight_v.grad
        assert grad is None or grad.abs().sum() == 0, key
        assert model.neck.prototypes.grad is None, key
        assert all(p.grad is None for p in model.teacher.parameters()), key


def test_local_crops_feed_the_patch_cluster_term():
    model = _build(cotap_loss=None, proto_loss=None, cls_cluster_loss=None,
                   cls_neighbor_loss=None, cluster_start_iter=0)
    inputs, samples = _batch()
    losses = model.loss(inputs, samples)
    assert set(losses) == {'loss_patch_cluster', 'patch_code_entropy'}
    local = inputs[2].clone().requires_grad_(True)  # first local student crop
    inputs = inputs[:2] + [local] + inputs[3:]
    torch.manual_seed(0)
    model.loss(inputs, samples)['loss_patch_cluster'].backward()
    assert local.grad is not None and local.grad.abs().sum() > 0
    for ds in samples:
        del ds.crop_boxes
    with pytest.raises(ValueError, match='crop_boxes'):
        model.loss(inputs, samples)


def test_optional_dino_cls_term():
    model = _build(cls_loss=dict(type='DINOClsLoss', loss_weight=1.0))
    inputs, samples = _batch()
    losses = model.loss(inputs, samples)
    logged = {'cls_teacher_entropy', 'cls_teacher_marginal_entropy', 'cls_kl'}
    assert set(losses) == FULL_KEYS | {'loss_cls'} | logged  # DINO's collapse diagnostics
    assert torch.isfinite(losses['loss_cls']) and losses['loss_cls'] > 0
    ln_k = math.log(model.cls_loss.out_dim)
    assert all(0 <= losses[k] <= ln_k + 1e-4 for k in logged - {'cls_kl'})
    # the demo / paper configs keep it off (weight 0): absent from the log
    assert 'loss_cls' not in _build().loss(inputs, samples)


def _mixed_batch(groups=2, seed=0):
    """[coco_anchor, coco_neighbour, in_anchor, in_neighbour] per group, as the neighbour collate
    of the mixed dataset builds it."""
    inputs, samples = _batch(B=4 * groups, seed=seed)
    for i, ds in enumerate(samples):
        ds.set_field('coco' if i % 4 < 2 else 'imagenet', 'source', field_type='metainfo')
        ds.set_field(i + 1 if i % 2 == 0 else i - 1, 'neighbor_index')
        ds.set_field(i % 2 == 1, 'is_neighbor', field_type='metainfo')
    return inputs, samples


def _perturb(inputs, positions, seed):
    g = torch.Generator().manual_seed(seed)
    out = [x.clone() for x in inputs]
    for x in out:
        x[positions] += torch.randn(x[positions].shape, generator=g)
    return out


def test_sources_route_samples_to_their_terms(monkeypatch):
    model = _build(proto_loss=None, patch_queue=None, cls_queue=None, cluster_start_iter=0)
    inputs, samples = _mixed_batch()
    coco, imnet = [0, 1, 4, 5], [2, 3, 6, 7]

    def run(x):
        torch.manual_seed(0)  # the random items of loss_cotap
        return {k: v.item() for k, v in model.loss(x, samples).items()}

    base = run(inputs)
    assert set(base) == (FULL_KEYS - {'loss_proto_entropy'}) | CODE_KEYS
    new_in = run(_perturb(inputs, imnet, 1))
    new_coco = run(_perturb(inputs, coco, 2))
    for key in ('loss_cotap', 'loss_patch_cluster'):
        assert new_in[key] == pytest.approx(base[key], rel=1e-6, abs=1e-7), key
        assert new_coco[key] != pytest.approx(base[key], rel=1e-4), key
    for key in ('loss_cls_cluster', 'loss_cls_neighbor'):
        assert new_coco[key] == pytest.approx(base[key], rel=1e-6, abs=1e-7), key
        assert new_in[key] != pytest.approx(base[key], rel=1e-4), key

    # a sub-batch without samples gives 0 for its terms (and a warning, once)
    for ds in samples:
        ds.set_field('coco', 'source', field_type='metainfo')
    logs = []
    monkeypatch.setattr(step_module, 'print_log', lambda msg, **kw: logs.append(msg))
    only_coco = model.loss(inputs, samples)
    model.loss(inputs, samples)
    assert len(logs) == 1 and "cls_sources=('coco',)" in logs[0]
    assert only_coco['loss_cls_cluster'].item() == 0.0
    assert only_coco['loss_cls_neighbor'].item() == 0.0
    assert only_coco['loss_patch_cluster'].item() > 0


def test_neighbor_index_is_remapped_to_the_sub_batch():
    model = _build()
    _, samples = _mixed_batch()
    emb = torch.randn(4, 8)
    imnet = [2, 3, 6, 7]
    assert find_partners(emb, samples, imnet).tolist() == [1, 0, 3, 2]
    assert find_partners(torch.randn(8, 8), samples, None).tolist() == [1, 0, 3, 2, 5, 4, 7, 6]
    # without neighbor_index: retrieval inside the sub-batch
    for ds in samples:
        del ds.neighbor_index
    emb = torch.tensor([[1., 0.], [0., 1.], [0.9, 0.1], [0.1, 0.9]])
    assert find_partners(emb, samples, imnet).tolist() == [2, 3, 0, 1]
    # neighbor_index -1 (no partner, neighbor_collate on plain items): retrieval for those only
    for i, ds in enumerate(samples):
        ds.set_field([1, 0, -1, -1][i % 4] + 4 * (i // 4) if i % 4 < 2 else -1, 'neighbor_index')
    assert find_partners(emb, samples, imnet).tolist() == [2, 3, 0, 1]
    samples[2].set_field(7, 'neighbor_index')  # 2 <-> 7 given, 3 and 6 retrieved
    samples[7].set_field(2, 'neighbor_index')
    assert find_partners(emb, samples, imnet).tolist() == [3, 3, 0, 0]
    samples[2].set_field(-2, 'neighbor_index')
    with pytest.raises(ValueError, match='-1 \\(no partner\\)'):
        find_partners(emb, samples, imnet)
    # a partner of another source is an error that names the field
    inputs, samples = _mixed_batch()
    samples[0].set_field(2, 'neighbor_index')
    with pytest.raises(ValueError, match='neighbor_index.*outside the sub-batch'):
        model.loss(inputs, samples)
    # partial source fields
    inputs, samples = _mixed_batch()
    del samples[3].source
    with pytest.raises(ValueError, match='source'):
        model.loss(inputs, samples)


def _released_ranking_items(s_maps, t_maps, fg, partner_of, anchors, perms, scales, topk):
    """Independent port of the released ranking lists: anchors [n] against their neighbours;
    random items = the neighbours of perm[r][n]; top-k cells of each image by its own pooled
    foreground; student / teacher cosine lists (order irrelevant to the loss)."""
    def select(maps, masks, idx, ks):  # -> [n, topk, D]
        B, G, D = maps.shape[:3]
        pm = F.adaptive_avg_pool2d(maps[idx].flatten(0, 1), ks)
        pm = pm.reshape(len(idx), G, D, ks * ks).permute(0, 1, 3, 2).reshape(len(idx), -1, D)
        pk = F.adaptive_avg_pool2d(masks[idx].flatten(0, 1), ks).reshape(len(idx), -1)
        order = torch.topk(pk, topk, dim=1).indices
        return torch.stack([pm[i, order[i]] for i in range(len(idx))])

    out_s, out_t, rand = [], [], []
    for ks in scales:
        nb = [partner_of[a] for a in anchors]
        for maps, out in ((s_maps, out_s), (t_maps, out_t)):
            u = F.normalize(select(maps, fg, anchors, ks), dim=-1)
            v = F.normalize(select(maps, fg, nb, ks), dim=-1)
            items = [torch.einsum('nxc,nyc->nxy', u, v)]
            items += [torch.einsum('nxc,nyc->nxy', u, v[p]) for p in perms]
            out.append(torch.cat(items, dim=2).reshape(-1))
        n = len(anchors)
        flag = torch.zeros(n, topk, (1 + len(perms)) * topk, dtype=torch.bool)
        flag[:, :, topk:] = True
        rand.append(flag.reshape(-1))
    return out_s, out_t, rand


def test_ranking_anchors_match_the_release(monkeypatch):
    """loss_cotap ranks anchors against their loaded neighbours (the released lists); with
    rank_all_images=True the neighbours are anchors too."""
    model = _build(pool_scales=(2, 4), topk=3, num_random=2)
    g = torch.Generator().manual_seed(0)
    B, G, h, w, D = 6, 2, 4, 4, 5
    s_maps = torch.randn(B, G, D, h, w, generator=g)
    t_maps = torch.randn(B, G, D, h, w, generator=g)
    fg = torch.rand(B, G, 1, h, w, generator=g)  # continuous: no ties in the top-k
    partner = torch.tensor([1, 0, 3, 2, 5, 4])  # [anchor, neighbour] x 3
    anchors = torch.tensor([0, 2, 4])
    perms = torch.tensor([[1, 2, 0], [2, 0, 1]])  # over the anchors
    monkeypatch.setattr(ranking_module, 'random_derangements', lambda n, r, device=None: perms)
    seen = []
    monkeypatch.setattr(model.cotap_loss, 'forward',
                        lambda s, t, r: seen.append((s, t, r)) or s.sum())

    def flat(x):  # [B, G, D, h, w] -> view-major [G*B, N, D]
        return x.permute(1, 0, 3, 4, 2).reshape(G * B, h * w, x.shape[2])

    def rank(s, t, f, partner, anchors, hw, G, B):
        return ranking_loss(model.cotap_loss, s, t, f, partner, anchors, hw, G, B,
                            model.pool_scales, model.topk, model.num_random)

    rank(flat(s_maps), flat(t_maps), flat(fg)[..., 0], partner, anchors, (h, w),
                      G, B)
    ref_s, ref_t, ref_r = _released_ranking_items(s_maps, t_maps, fg, partner.tolist(),
                                                  anchors.tolist(), perms.tolist(), (2, 4), 3)
    assert len(seen) == 2
    for (s, t, r), rs, rt, rr in zip(seen, ref_s, ref_t, ref_r):
        assert s.numel() == 3 * 9 * 3  # anchors x k^2 x (1 + R)
        for got, want in ((s, rs), (t, rt)):
            torch.testing.assert_close(got.sort().values, want.sort().values)
        assert int(r.sum()) == int(rr.sum())
        # the random items are exactly the entries the port flags as random
        torch.testing.assert_close(s[r].sort().values, rs[rr].sort().values)
    # every image an anchor (the former behaviour): twice the items
    seen.clear()
    monkeypatch.setattr(ranking_module, 'random_derangements',
                        lambda n, r, device=None: torch.stack([(torch.arange(n) + 1) % n] * r))
    rank(flat(s_maps), flat(t_maps), flat(fg)[..., 0], partner, None, (h, w), G, B)
    assert seen[0][0].numel() == 6 * 9 * 3
    samples = [DataSample(metainfo=dict(is_neighbor=bool(i % 2))) for i in range(B)]
    assert ranking_anchors([DataSample() for _ in range(B)], None, torch.device('cpu')) is None
    assert ranking_anchors(samples, None, torch.device('cpu')).tolist() == [0, 2, 4]
    assert ranking_anchors(samples, [0, 1, 4, 5], torch.device('cpu')).tolist() == [0, 2]
    # one anchor (a tiny batch): its random items are its own neighbour, as in the release
    seen.clear()
    two = torch.cat([flat(s_maps)[:2], flat(s_maps)[B:B + 2]])  # images 0, 1 of both views
    rank(two, two, torch.rand(4, h * w), torch.tensor([1, 0]), torch.tensor([0]),
                      (h, w), G, 2)
    s, _, r = seen[0]
    assert s.numel() == 9 * 3
    torch.testing.assert_close(s[r][:9], s[~r])  # random block 0 == the positive block
    with pytest.raises(ValueError, match='no anchor'):
        rank(two, two, torch.rand(4, h * w), torch.tensor([1, 0]),
                          torch.tensor([], dtype=torch.long), (h, w), G, 2)


def test_cls_neighbor_uses_the_global_crops(monkeypatch):
    inputs, samples = _mixed_batch()
    for views, expected in (('global', 2), ('all', 4)):
        model = _build(cls_neighbor_views=views, cluster_start_iter=0)
        shapes = []
        fwd = model.cls_neighbor_loss.forward
        monkeypatch.setattr(model.cls_neighbor_loss, 'forward',
                            lambda s, c, p, f=fwd: shapes.append(s.shape) or f(s, c, p))
        model.loss(inputs, samples)
        assert shapes and shapes[0][0] == expected, views
    with pytest.raises(ValueError, match='cls_neighbor_views'):
        _build(cls_neighbor_views='local')


def test_queues_survive_a_state_dict_resume():
    model = _build()
    inputs, samples = _batch()
    for _ in range(2):
        model.loss(inputs, samples)
    n_patch, n_cls = len(model.patch_queue), len(model.cls_queue)
    assert n_patch > 0 and n_cls == 16
    fresh = _build()
    assert len(fresh.patch_queue) == 0
    fresh.load_state_dict(model.state_dict())
    assert int(fresh.loss_iter) == 2
    torch.testing.assert_close(fresh.patch_queue.ordered(), model.patch_queue.ordered())
    torch.testing.assert_close(fresh.cls_queue.ordered(), model.cls_queue.ordered())
    torch.manual_seed(0)
    a = model.loss(inputs, samples)
    torch.manual_seed(0)
    b = fresh.loss(inputs, samples)
    for key in FULL_KEYS:
        assert a[key].item() == pytest.approx(b[key].item(), rel=1e-5), key
    torch.testing.assert_close(fresh.patch_queue.ordered(), model.patch_queue.ordered())
    assert len(model.cls_queue) == n_cls + 8


def test_prototype_bank_takes_every_sample_until_full():
    """As released: the whole step enters the bank until it is full, then bank_samples_per_step."""
    model = _build(bank_size=12, bank_samples_per_step=2, kmeans_iters=5,
                   neck=dict(num_prototypes=8))
    hw = (4, 4)
    for step, (count, ptr) in enumerate([(8, 8), (12, 0), (12, 2), (12, 4)]):
        tokens = torch.randn(8, 17, model.neck.embed_dims) + step  # 8 samples a step
        _update_bank(model, tokens, hw)
        assert (int(model.proto_bank.count), int(model.proto_bank.ptr)) == (count, ptr), step
        assert (len(model.proto_bank), model.proto_bank._ptr) == (count, ptr), step
    # the first step's samples are the pooled maps of all 8 images, in order
    model = _build(bank_size=12, bank_samples_per_step=2, neck=dict(num_prototypes=8))
    tokens = torch.randn(8, 17, model.neck.embed_dims)
    _update_bank(model, tokens, hw)
    expected = torch.nn.functional.adaptive_avg_pool2d(
        tokens[:, 1:].transpose(1, 2).reshape(8, -1, 4, 4), 3)
    torch.testing.assert_close(PrototypeTerm.bank_samples(model)[:8], expected)


def _update_bank(model, tokens, hw):
    """The prototype term's bank update for the tokens [n, 1+N, C] of one view (G = 1)."""
    step = CoTAPStep(student_views=[torch.zeros(tokens.shape[0], 3, 8, 8)],
                     data_samples=[DataSample() for _ in range(tokens.shape[0])], G=1,
                     B=tokens.shape[0], p_pos=None, c_pos=None, clustering=False)
    step.tokens, step.hw = tokens, hw
    PrototypeTerm()(model, step)


@pytest.mark.parametrize('teacher_prototypes', ['ema', 'copy'])
def test_prototype_bank_init_and_entropy(teacher_prototypes):
    # bank of 16 = the tiny neck's 16 prototypes; 2 x 4 global crops -> 8 samples a step
    model = _build(bank_size=16, bank_samples_per_step=16, kmeans_iters=20,
                   teacher_prototypes=teacher_prototypes)
    inputs, samples = _batch()
    for step in range(2):
        losses = model.loss(inputs, samples)
        assert not bool(model.neck.prototypes_initialized) and not model.neck.initialized
        assert losses['loss_proto_entropy'].item() == 0.0
    assert int(model.proto_bank.count) == 16 and int(model.proto_bank.ptr) == 0
    before = model.teacher['neck'].prototypes.clone()
    losses = model.loss(inputs, samples)
    assert bool(model.neck.prototypes_initialized)
    assert not torch.allclose(before, model.neck.prototypes)
    if teacher_prototypes == 'copy':
        assert bool(model.teacher['neck'].prototypes_initialized)
        torch.testing.assert_close(model.teacher['neck'].prototypes, model.neck.prototypes)
    else:  # as released: the teacher's prototypes only follow the student's through the EMA
        torch.testing.assert_close(model.teacher['neck'].prototypes, before)
        ema_update_(*paired_tensors(model.teacher['neck'], model.neck), 0.9)
        torch.testing.assert_close(model.teacher['neck'].prototypes,
                                   0.9 * before + 0.1 * model.neck.prototypes)
        assert bool(model.teacher['neck'].prototypes_initialized)  # buffers are copied
    ent = losses['loss_proto_entropy']
    assert torch.isfinite(ent) and 0 < ent.item() <= math.log(16) + 1e-4
    model.zero_grad()
    ent.backward()
    assert model.neck.prototypes.grad.abs().sum() > 0
    assert model.backbone.layers[0].attn.qkv.weight.grad is None  # bank is detached


def test_disabled_terms_and_partner_field():
    model = _build(cls_loss=None, proto_loss=dict(type='PrototypeEntropyLoss', loss_weight=0.),
                   patch_cluster_loss=dict(type='PatchClusterLoss', loss_weight=0.),
                   cls_cluster_loss=None,
                   cls_neighbor_loss=dict(type='ClsNeighborLoss', loss_weight=None))
    inputs, samples = _batch()
    assert set(model.loss(inputs, samples)) == {'loss_cotap'}
    assert model.patch_queue is None and model.cls_queue is None
    assert not any('_queue' in n for n in model._ddp_params_and_buffers_to_ignore)
    # one term off, the others on
    partial = _build(cls_neighbor_loss=dict(type='ClsNeighborLoss', loss_weight=0.))
    assert set(partial.loss(inputs, samples)) == FULL_KEYS - {'loss_cls_neighbor'}
    assert partial.cls_queue is not None  # still used by loss_cls_cluster
    for i, ds in enumerate(samples):
        ds.set_field((i + 1) % len(samples), 'neighbor_index')
    assert torch.isfinite(model.loss(inputs, samples)['loss_cotap'])
    samples[0].set_field(0, 'neighbor_index')  # itself
    with pytest.raises(ValueError, match='neighbor_index'):
        model.loss(inputs, samples)


def test_bad_inputs():
    model = _build()
    inputs, samples = _batch()
    with pytest.raises(ValueError, match='V \\+ T'):
        model.loss(inputs[:-1], samples)
    with pytest.raises(ValueError, match='pool_scales'):
        _build(pool_scales=(4, 16)).loss(inputs, samples)
    with pytest.raises(ValueError, match='bank_size'):
        _build(bank_size=8)


def test_extract_feat():
    model = _build()
    feat = model.extract_feat(torch.randn(2, 3, 64, 64))
    assert feat.shape == (2, 2 * 96, 8, 8)
    assert model.extract_feat([torch.randn(1, 3, 32, 32)]).shape == (1, 192, 4, 4)


def test_cotap_loss_decreases_on_fixed_batch():
    model = _build(cls_loss=None, proto_loss=None, **NO_NEW_TERMS)
    inputs, samples = _batch(L=0, seed=1, noise=0.5)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    torch.manual_seed(0)  # the random derangements
    values = []
    for _ in range(12):
        torch.manual_seed(0)  # same random items every step
        loss = model.loss(inputs, samples)['loss_cotap']
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(loss.item())
    assert all(math.isfinite(v) for v in values)
    assert sum(values[-3:]) / 3 < 0.8 * values[0], values


def test_tiny_config_trains_with_tools_train(tmp_path):
    train_in_process([
        TINY, '--work-dir', str(tmp_path), '--cfg-options', 'train_cfg.max_iters=4',
        'default_hooks.logger.interval=1', 'train_dataloader.batch_size=4',
        'model.bank_size=16', 'model.bank_samples_per_step=8'
    ])
    rows = logged_loss_rows(tmp_path)
    assert len(rows) == 4
    for r in rows:
        for key in ('loss', ) + tuple(FULL_KEYS):
            assert math.isfinite(r[key]), (key, r)
        assert 'loss_cls' not in r
    ckpt = torch.load(str(tmp_path / 'iter_4.pth'), map_location='cpu', weights_only=False)
    sd = ckpt['state_dict']
    assert bool(sd['teacher_initialized']) and bool(sd['neck.prototypes_initialized'])
    # the EMA hook moved the teacher away from the (initial) student copy but not onto it
    assert not torch.equal(sd['teacher.backbone.layers.0.attn.qkv.weight'],
                           sd['backbone.layers.0.attn.qkv.weight'])


def test_runner_resume_keeps_queues_and_iteration(tmp_path):
    opts = ['default_hooks.logger.interval=1', 'train_dataloader.batch_size=4',
            'model.bank_size=16', 'model.bank_samples_per_step=8',
            'default_hooks.checkpoint.interval=1']
    train_in_process([TINY, '--work-dir', str(tmp_path), '--cfg-options', 'train_cfg.max_iters=2']
                     + opts)
    train_in_process([TINY, '--work-dir', str(tmp_path), '--cfg-options', 'train_cfg.max_iters=3']
                     + opts + ['--resume'])
    sd2 = torch.load(str(tmp_path / 'iter_2.pth'), map_location='cpu', weights_only=False)
    sd3 = torch.load(str(tmp_path / 'iter_3.pth'), map_location='cpu', weights_only=False)
    sd2, sd3 = sd2['state_dict'], sd3['state_dict']
    assert int(sd2['loss_iter']) == 2 and int(sd3['loss_iter']) == 3
    for name, per_step in (('patch_queue', None), ('cls_queue', 2 * 4)):
        n2, n3 = int(sd2[f'{name}.count']), int(sd3[f'{name}.count'])
        assert 0 < n2 < n3 <= sd3[f'{name}.queue'].shape[0], name
        if per_step is not None:
            assert n3 == n2 + per_step
        # the resumed run appended to the saved queue (no wrap yet): same first n2 entries
        torch.testing.assert_close(sd3[f'{name}.queue'][:n2], sd2[f'{name}.queue'][:n2])
        assert int(sd3[f'{name}.ptr']) == n3
    rows = logged_loss_rows(tmp_path)  # of the resumed (latest) run
    assert [r['iter'] for r in rows] == [3]
    assert all(rows[0][k] > 0 for k in CLUSTER_KEYS)


def test_checkpoint_of_the_earlier_bank_layout_loads():
    """Earlier versions kept the bank in three buffers (proto_bank [S, C, K, K], proto_bank_ptr,
    proto_bank_count); such a state dict loads into the FeatureQueue bank, host copies included."""
    model = _build(bank_size=12, bank_samples_per_step=2, neck=dict(num_prototypes=8))
    _update_bank(model, torch.randn(8, 17, model.neck.embed_dims), (4, 4))
    sd = model.state_dict()
    old = {k: v for k, v in sd.items() if not k.startswith('proto_bank.')}
    old['proto_bank'] = sd['proto_bank.queue'].reshape(12, model.neck.embed_dims, 3, 3).clone()
    old['proto_bank_ptr'], old['proto_bank_count'] = sd['proto_bank.ptr'], sd['proto_bank.count']
    fresh = _build(bank_size=12, bank_samples_per_step=2, neck=dict(num_prototypes=8))
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.proto_bank.queue, model.proto_bank.queue)
    assert (len(fresh.proto_bank), fresh.proto_bank._ptr) == (8, 8)
    torch.testing.assert_close(PrototypeTerm.bank_samples(fresh), PrototypeTerm.bank_samples(model))

"""The CoTAP configs: every one parses and is consistent; the released runs carry the paper's values
(docs/cotap.md), build on the ``meta`` device, and their data / model pull a real batch."""
import argparse
import glob
import math
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

import cotap_mm  # noqa: F401  (registers models, datasets, transforms, neighbor_collate)
from cotap_test_helpers.paper_data import (shrink_cotap_data, shrink_cotap_model,
                                           write_paper_data)
from mmpretrain.registry import MODELS

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs/cotap/*.py')))
ENTRY = osp.join(REPO, 'configs/cotap_vits16_coco.py')
MAIN = 'cotap_vit-small-p16-dino_4xb28-240k_coco-in1k.py'

# the released runs: arch, patch, GPUs, batch per GPU, iterations,
# the public source file and our converted checkpoint
RELEASED = {
    MAIN: ('dino-s', 16, 4, 28, 240000, 'dino_deitsmall16_pretrain.pth', 'dino_vits16'),
    'cotap_vit-small-p16-ibot_4xb28-240k_coco-in1k.py':
        ('dino-s', 16, 4, 28, 240000, 'ibot/vits_16/checkpoint_teacher.pth', 'ibot_vits16'),
    'cotap_vit-small-p16-mugs_4xb28-240k_coco-in1k.py':
        ('dino-s', 16, 4, 28, 240000, 'MUGS_VITS16.pth', 'mugs_vits16'),
    'cotap_vit-small-p16-leopart_4xb28-240k_coco-in1k.py':
        ('dino-s', 16, 4, 28, 240000, 'LEOPART_VITS16.ckpt', 'leopart_vits16'),
    'cotap_vit-base-p16-dino_8xb16-210k_coco-in1k.py':
        ('dino-b', 16, 8, 16, 210000, 'dino_vitbase16_pretrain.pth', 'dino_vitb16'),
    'cotap_vit-base-p16-ibot_8xb16-240k_coco-in1k.py':
        ('dino-b', 16, 8, 16, 240000, 'ibot/vitb_16/checkpoint_teacher.pth', 'ibot_vitb16'),
    'cotap_vit-base-p16-mugs_8xb16-240k_coco-in1k.py':
        ('dino-b', 16, 8, 16, 240000, 'MUGS_VITB16.pth', 'mugs_vitb16'),
    'cotap_vit-base-p8-dino_8xb8-210k_coco-in1k.py':
        ('dino-b', 8, 8, 8, 210000, 'dino_vitbase8_pretrain.pth', 'dino_vitb8'),
}
COCO_ONLY = {
    'cotap_vit-small-p16_4xb28-240k_coco.py': ('dino-s', 16, 4, 28, 240000, 'dino_vits16'),
    'cotap_vit-base-p16_8xb16-210k_coco.py': ('dino-b', 16, 8, 16, 210000, 'dino_vitb16'),
}
COCO_NN = 'data/coco/knn/train2017_dino_vitb16_k7.npz'
IMAGENET_NN = 'data/imagenet/knn/train_dino_vitb16_k7.npz'
EMBED = {'dino-s': 384, 'dino-b': 768}
LOSS_KEYS = ('loss_cotap', 'loss_patch_cluster', 'loss_cls_cluster', 'loss_cls_neighbor',
             'loss_proto_entropy')


def _cfg(name: str) -> Config:
    return Config.fromfile(osp.join(REPO, 'configs/cotap', name))


def _header(path: str) -> str:
    lines = []
    for line in open(path).read().splitlines():
        if not line.startswith('#'):
            break
        lines.append(line)
    return '\n'.join(lines)


def _sources(cfg: Config):
    """Sources the data gives each sample (None: no ``source`` field, every term sees all)."""
    loader = cfg.train_dataloader
    if loader.collate_fn.type == 'default_collate':
        return None
    ds = loader.dataset
    return {'coco', 'imagenet'} if ds.type == 'MixedCOCOImageNet' else {'coco'}


def _cfg_options(*opts: str) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(['--cfg-options', *opts]).cfg_options


def test_configs_found():
    names = {osp.basename(p) for p in CONFIGS}
    assert set(RELEASED) | set(COCO_ONLY) | {'cotap_vit-tiny-p8_1xb8-demo_synthetic.py'} <= names


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_config_parses_and_is_consistent(path):
    cfg = Config.fromfile(path)
    assert cfg.model.type == 'CoTAP'
    assert cfg.model.data_preprocessor.type == 'CoTAPDataPreprocessor'  # colour: see below
    assert any(h.type == 'EMATeacherHook' for h in cfg.custom_hooks)
    loader = cfg.train_dataloader
    ds = loader.dataset
    if loader.collate_fn.type == 'neighbor_collate':
        # neighbour data: every dataset has its k-NN file
        subsets = [ds.coco, ds.imagenet] if ds.type == 'MixedCOCOImageNet' else [ds]
        assert ds.type in ('MixedCOCOImageNet', 'COCOUnlabeled')
        assert all(s.neighbors_file for s in subsets)
    else:
        # default_collate cannot take [anchor, neighbour] groups
        assert loader.collate_fn.type == 'default_collate'
        assert ds.type != 'MixedCOCOImageNet' and not ds.get('neighbors_file')
    # every term gets samples of a source the data produces (none would silently give 0)
    sources = _sources(cfg)
    if sources is not None:
        m = cfg.model
        for key in ('patch_sources', 'cls_sources'):
            assert set(m[key]) <= sources, (key, m[key], sources)
        assert set(m.bank_sources or m.patch_sources) <= sources
    # the cosine schedules follow max_iters
    max_iters = cfg.train_cfg.max_iters
    assert len(cfg.param_scheduler) == 2
    for sched in cfg.param_scheduler:
        assert sched.by_epoch is False and sched.T_max == sched.end == max_iters
    # the pooling scales divide the patch grid (the released ViT-B/8 keeps /16's (7, 14))
    grid = cfg.model.backbone.img_size // cfg.model.backbone.patch_size
    scales = cfg.model.pool_scales
    assert max(scales) <= grid and all(grid % s == 0 for s in scales), (scales, grid)


def _geometric_views(cfg):
    """Every GeometricMultiView transform of a config's training data."""
    found = []

    def walk(x):
        if isinstance(x, dict):
            if x.get('type') == 'GeometricMultiView':
                found.append(x)
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(cfg.train_dataloader)
    return found


@pytest.mark.parametrize('path', CONFIGS + [osp.join(REPO, 'configs/cotap_vits16_coco.py')],
                         ids=osp.basename)
def test_student_colour_is_applied_exactly_once(path):
    """Batch colour (released: one draw per crop index) needs the preprocessor's
    PerViewColorAugment; per-image jitter in the pipeline forbids it."""
    cfg = Config.fromfile(path)
    views = _geometric_views(cfg)
    assert views, path
    pre = cfg.model.data_preprocessor
    augs = pre.get('batch_augments') or []
    has_batch_color = any(a.get('type') == 'PerViewColorAugment' for a in augs)
    for v in views:
        if v.get('batch_color', False):
            assert pre.type == 'CoTAPDataPreprocessor' and has_batch_color, path
            assert not v.get('student_pipeline'), path
        else:
            assert not has_batch_color and v.get('student_pipeline'), path


@pytest.mark.parametrize('name', sorted(RELEASED))
def test_released_config_values(name):
    arch, patch, gpus, batch, iters, src, ckpt = RELEASED[name]
    m = re.match(r'cotap_vit-(small|base)-p(\d+)-(\w+)_(\d+)xb(\d+)-(\d+)k_coco-in1k\.py$', name)
    assert m and int(m[2]) == patch and (int(m[4]), int(m[5]), int(m[6]) * 1000) == (gpus, batch,
                                                                                       iters)
    path = osp.join(REPO, 'configs/cotap', name)
    cfg = Config.fromfile(path)
    model = cfg.model
    assert model.backbone.arch == arch and model.backbone.patch_size == patch
    assert model.backbone.img_size == 224 and model.backbone.drop_path_rate == 0
    assert model.pool_scales == (7, 14)  # also for /8, as released
    assert (model.topk, model.num_random) == (5, 5)
    assert model.neck.num_prototypes == 64 and model.neck.kernel_size == 3
    assert (model.patch_head.num_prototypes, model.cls_head.num_prototypes) == (512, 4096)
    assert (model.bank_size, model.bank_samples_per_step, model.kmeans_iters) == (1024, 32, 3000)
    # sources: COCO -> patch terms, ImageNet -> CLS terms and the prototype bank
    assert model.patch_sources == ('coco', ) and model.cls_sources == ('imagenet', )
    assert model.bank_sources == ('imagenet', )
    # queues, Sinkhorn, temperatures, the CoTAP term, weights
    assert model.patch_queue == dict(size=262144, max_per_step=2048)
    assert model.cls_queue == dict(size=32768, max_per_step=100)
    assert model.patch_sinkhorn == dict(epsilon=0.05, iters=3)
    assert model.cls_sinkhorn == dict(epsilon=0.07, iters=3)
    assert model.cluster_start_iter == 1
    assert model.patch_cluster_loss.student_temp == 0.1
    assert model.patch_cluster_loss.roi_size == 6
    assert model.cls_cluster_loss.student_temp == 0.1
    assert model.cls_neighbor_loss.student_temp == 0.2
    assert model.proto_loss.temperature == 0.1
    c = model.cotap_loss
    assert (c.tau, c.weight_thres, c.alpha) == (0.5, -0.2, 0.1)
    for key in ('cotap_loss', 'patch_cluster_loss', 'cls_cluster_loss', 'cls_neighbor_loss',
                'proto_loss'):
        assert model[key].loss_weight == 1.0, key
    assert model.cls_loss.loss_weight == 0.0  # DINO CLS term: not in the paper's objective
    fg = model.fg_cfg
    assert (fg.keep_mass, fg.blur_kernel, fg.blur_sigma, fg.min_component_size) == (0.6, 7, 0.6, 0)
    # the released choices of docs/cotap.md
    assert (model.patch_codes_on, model.cls_neighbor_views, model.rank_all_images,
            model.teacher_prototypes) == ('all', 'global', False, 'ema')
    assert (model.patch_cluster_loss.fg_threshold, model.patch_cluster_loss.reduction) == (1.0,
                                                                                           'pair')
    assert model.patch_head.last_mlp_bias is False and model.cls_head.last_mlp_bias is False
    ema = next(h for h in cfg.custom_hooks if h.type == 'EMATeacherHook')
    assert (ema.momentum, ema.end_momentum) == (0.9997, 0.9999)
    # optimisation
    ow = cfg.optim_wrapper
    assert ow.type == 'AmpOptimWrapper' and ow.get('loss_scale', 'dynamic') == 'dynamic'
    opt = ow.optimizer
    assert opt.type == 'AdamW' and opt.lr == 3e-5 and opt.weight_decay == 0.024
    assert opt.betas == (0.9, 0.999)
    pw = ow.paramwise_cfg
    assert pw.norm_decay_mult == 0.0 and pw.bias_decay_mult == 0.0
    assert {k: v.lr_mult for k, v in pw.custom_keys.items()} == {'patch_head': 10.0,
                                                                 'cls_head': 10.0}
    lr_sched, wd_sched = cfg.param_scheduler
    assert lr_sched.type == 'CosineAnnealingLR'
    assert lr_sched.eta_min == 3e-6 and 'eta_min_ratio' not in lr_sched  # every group, heads too
    assert wd_sched.type == 'CosineAnnealingParamScheduler'
    assert wd_sched.param_name == 'weight_decay'
    assert math.isclose(opt.weight_decay * wd_sched.eta_min_ratio, 0.24)
    assert cfg.train_cfg.max_iters == iters and lr_sched.T_max == wd_sched.T_max == iters
    assert cfg.auto_scale_lr.base_batch_size == gpus * batch
    assert cfg.randomness.seed == 0 and cfg.find_unused_parameters is True
    # data: COCO train2017 + ImageNet-1k train with the shared 7-NN files
    loader = cfg.train_dataloader
    assert loader.batch_size == batch and loader.collate_fn.type == 'neighbor_collate'
    assert loader.sampler.type == 'InfiniteSampler' and loader.drop_last is True
    ds = loader.dataset
    assert ds.type == 'MixedCOCOImageNet'
    assert (ds.coco.type, ds.coco.data_root, ds.coco.data_prefix) == ('COCOUnlabeled', 'data/coco',
                                                                      'train2017')
    assert (ds.imagenet.type, ds.imagenet.data_root,
            ds.imagenet.data_prefix) == ('ImageNetUnlabeled', 'data/imagenet', 'train')
    assert ds.coco.neighbors_file == COCO_NN and ds.imagenet.neighbors_file == IMAGENET_NN
    for sub in (ds.coco, ds.imagenet):
        views = next(t for t in sub.pipeline if t.type == 'GeometricMultiView')
        assert (views.num_global, views.global_size, views.global_scale) == (2, 224, (0.25, 1.0))
        assert (views.num_local, views.local_size, views.local_scale) == (4, 96, (0.05, 0.1))
        assert views.flip_prob == 0.0 and views.teacher_views == 'global'
    # the start checkpoint and the commands that make it and the neighbour files
    assert cfg.load_from == f'checkpoints/{ckpt}_cotap.pth'
    header = re.sub(r'\\\n#\s+', '', _header(path))  # join continued command lines
    assert (f'python tools/model_converters/vit2cotap.py {src} checkpoints/{ckpt}_cotap.pth'
            in header)
    for out in (COCO_NN, IMAGENET_NN):
        cmd = next(line for line in header.splitlines() if f'--out {out}' in line)
        assert 'tools/misc/compute_neighbors.py' in cmd and '-k 7' in cmd
        assert '--checkpoint checkpoints/dino_vitb16_cotap.pth' in cmd


@pytest.mark.parametrize('name', sorted(RELEASED) + sorted(COCO_ONLY))
def test_model_builds_on_meta(name):
    cfg = _cfg(name)
    arch, patch = (RELEASED.get(name) or COCO_ONLY[name])[:2]
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    c = EMBED[arch]
    grid = 224 // patch
    assert model.backbone.embed_dims == c and model.backbone.patch_embed.init_out_size == (grid,
                                                                                          grid)
    assert model.backbone.pos_embed.shape == (1, grid * grid + 1, c)
    assert model.neck.out_channels == 2 * c and model.neck.num_prototypes == 64
    assert model.patch_head.mlp[0].in_features == 2 * c
    assert model.patch_head(torch.empty(1, 2 * c, device='meta')).shape == (1, 512)
    assert model.cls_head(torch.empty(1, 2 * c, device='meta')).shape == (1, 4096)
    assert model.patch_queue.queue.shape == (262144, 256)
    assert model.cls_queue.queue.shape == (32768, 256)
    assert model.proto_bank.queue.shape == (1024, c * 3 * 3) and not model.proto_bank.split_across_ranks
    assert set(model.teacher.keys()) == {'backbone', 'neck', 'patch_head', 'cls_head'}


def test_entry_point_is_the_main_released_run():
    entry = Config.fromfile(ENTRY).to_dict()
    main = _cfg(MAIN).to_dict()
    assert entry == main
    header = _header(ENTRY)
    assert 'tools/dist_train.sh configs/cotap_vits16_coco.py 8' in header
    assert MAIN in header


def test_ablations_in_the_entry_header_are_one_cfg_option_away():
    header = _header(ENTRY)
    opts = re.findall(r'^#\s+"?(model\.[\w.]+=\S+?)"?\s', header, flags=re.M)
    assert 'model.patch_cluster_loss.loss_weight=0' in opts and len(opts) >= 8
    for opt in opts:
        cfg = Config.fromfile(ENTRY)
        cfg.merge_from_dict(_cfg_options(opt))
        with torch.device('meta'):
            model = MODELS.build(cfg.model)
        key, value = opt.split('=', 1)
        if key.endswith('loss_weight') and value == '0':
            loss = getattr(model, key.split('.')[1])
            assert loss is None or loss.loss_weight == 0, opt
    # a disabled clustering term has no queue; the others keep theirs
    cfg = Config.fromfile(ENTRY)
    cfg.merge_from_dict(_cfg_options('model.patch_cluster_loss.loss_weight=0'))
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    assert model.patch_queue is None and model.cls_queue is not None


@pytest.mark.parametrize('name', sorted(COCO_ONLY))
def test_coco_only_configs(name):
    arch, patch, gpus, batch, iters, ckpt = COCO_ONLY[name]
    path = osp.join(REPO, 'configs/cotap', name)
    cfg = Config.fromfile(path)
    assert cfg.model.backbone.arch == arch and cfg.model.backbone.patch_size == patch
    loader = cfg.train_dataloader
    assert loader.collate_fn.type == 'neighbor_collate' and loader.batch_size == batch
    ds = loader.dataset
    assert ds.type == 'COCOUnlabeled' and ds.neighbors_file == COCO_NN
    assert (ds.data_root, ds.data_prefix) == ('data/coco', 'train2017')
    # every sample is 'coco': the CLS terms and the bank must take COCO samples
    assert cfg.model.cls_sources == ('coco', ) and cfg.model.patch_sources == ('coco', )
    assert cfg.model.bank_sources == ('coco', )
    assert cfg.train_cfg.max_iters == iters and cfg.auto_scale_lr.base_batch_size == gpus * batch
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.load_from == f'checkpoints/{ckpt}_cotap.pth'
    header = _header(path)
    assert 'COCO-only' in header and 'Known differences' not in header
    assert 'in-batch' not in header and 'compute_neighbors.py' in header


def _one_batch(cfg):
    init_default_scope('mmpretrain')
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
    return next(iter(loader))


def _loss_calls(cfg, batch, num: int = 3):
    """``num`` loss() calls of the config's model with a tiny backbone (bank of 8, which takes
    every sample of a step until full: full after the first call, k-means at the start of the
    second, so the prototype term is on from the second)."""
    shrink_cotap_model(cfg)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.train()
    data = model.data_preprocessor(batch, True)
    return [model.loss(**data) for _ in range(num)]


def test_mixed_config_pulls_a_batch_and_trains(tmp_path):
    data = write_paper_data(str(tmp_path))
    cfg = _cfg(MAIN)
    shrink_cotap_data(cfg, data, batch_size=2)
    batch = _one_batch(cfg)
    samples, inputs = batch['data_samples'], batch['inputs']
    # 2 index groups x [coco anchor, coco neighbour, imagenet anchor, imagenet neighbour]
    assert [s.source for s in samples] == ['coco', 'coco', 'imagenet', 'imagenet'] * 2
    assert [s.neighbor_index for s in samples] == [1, 0, 3, 2, 5, 4, 7, 6]
    assert [s.is_neighbor for s in samples] == [False, True] * 4
    # 6 student views (2 global 32 px + 4 local 16 px) + 2 clean teacher copies of the globals
    assert [tuple(x.shape) for x in inputs] == [(8, 3, 32, 32)] * 2 + [(8, 3, 16, 16)] * 4 + [
        (8, 3, 32, 32)] * 2
    for a in (0, 2, 4, 6):  # each neighbour is one listed in the anchor's k-NN row
        anchor, nb = samples[a], samples[a + 1]
        name = 'coco' if anchor.source == 'coco' else 'imagenet'
        root, files = data[f'{name}_root'], data[f'{name}_files']
        row = files.index(osp.relpath(anchor.img_path, root))
        assert files.index(osp.relpath(nb.img_path, root)) in data[f'{name}_neighbors'][row]
    # the config's model (tiny backbone) takes the batch: all five terms, Sinkhorn from step 2 on
    first, second, third = _loss_calls(cfg, batch)
    assert set(LOSS_KEYS) <= set(second) and 'loss_cls' not in second
    assert all(torch.isfinite(v).all() for v in second.values())
    for key in ('loss_patch_cluster', 'loss_cls_cluster', 'loss_cls_neighbor'):
        assert first[key] == 0 and second[key] > 0, key
    assert second['loss_cotap'] > 0
    # the prototype bank (ImageNet images) filled up, k-means ran, the entropy term is on
    assert first['loss_proto_entropy'] == 0 and second['loss_proto_entropy'] > 0


def test_coco_only_config_feeds_the_cls_terms(tmp_path):
    data = write_paper_data(str(tmp_path))
    cfg = _cfg('cotap_vit-small-p16_4xb28-240k_coco.py')
    shrink_cotap_data(cfg, data, batch_size=3)
    batch = _one_batch(cfg)
    assert [s.source for s in batch['data_samples']] == ['coco'] * 6
    assert [s.neighbor_index for s in batch['data_samples']] == [1, 0, 3, 2, 5, 4]
    _, second, third = _loss_calls(cfg, batch)
    assert second['loss_cls_cluster'] > 0 and second['loss_cls_neighbor'] > 0
    assert third['loss_proto_entropy'] > 0  # the bank takes COCO samples
    # with the mixed-data default the CLS terms would silently get no sample
    cfg.model.cls_sources = ('imagenet', )
    second = _loss_calls(cfg, batch, num=2)[1]
    assert second['loss_cls_cluster'] == 0 and second['loss_cls_neighbor'] == 0


def test_tiny_model_builds():
    cfg = _cfg('cotap_vit-tiny-p8_1xb8-demo_synthetic.py')
    model = MODELS.build(cfg.model)
    assert model.backbone.embed_dims == 96 and model.neck.num_prototypes == 16
    assert model.extract_feat(torch.zeros(1, 3, 64, 64)).shape == (1, 192, 8, 8)
    assert cfg.find_unused_parameters is True

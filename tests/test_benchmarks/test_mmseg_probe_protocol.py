"""The released CoTAP linear-probe protocol in the mmseg configs (train_segmentation.py): flip +
RandomResizedCrop for training, images and labels squashed to 448 for evaluation (Cityscapes: full
resolution labels), an evaluation after every pass, the best mIoU kept; and its two transforms."""
import glob
import json
import os.path as osp

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmseg.registry import DATASETS
from PIL import Image

import cotap_mm  # noqa: F401
from cotap_mm.datasets.transforms.seg_probe import SegRandomResizedCrop, SetOriShapeToImgShape
from cotap_test_helpers.seg_data import shrink_seg_config, write_ade20k, write_pretrain_checkpoint
from cotap_test_helpers.tiny_runs import REPO_ROOT
from cotap_test_helpers.tool_runs import load_tool

CFG_DIR = osp.join(REPO_ROOT, 'configs', 'benchmarks', 'mmseg')
LINEAR = sorted(glob.glob(osp.join(CFG_DIR, 'linear_*.py')))
# one pass over the training set, in iterations (released: validation after every epoch;
# Cityscapes every 10 epochs; COCO-Stuff-171's pass is longer than the run)
VAL_INTERVAL = {'voc12aug': 82, 'ade20k': 157, 'coco-stuff27': 193, 'coco-stuff171': 462,
                'cityscapes': 460}


def _types(pipeline):
    return [t['type'] for t in pipeline]


@pytest.mark.parametrize('path', LINEAR, ids=lambda p: osp.basename(p))
def test_linear_configs_follow_the_released_protocol(path):
    cfg = Config.fromfile(path)
    data = next(k for k in VAL_INTERVAL if f'_{k}-' in osp.basename(path))
    city = data == 'cityscapes'
    train = cfg.train_dataloader.dataset.pipeline
    assert _types(train) == ['LoadImageFromFile', 'LoadAnnotations', 'RandomFlip',
                             'mmpretrain.SegRandomResizedCrop', 'PackSegInputs']
    assert train[2]['prob'] == 0.5
    crop = train[3]
    assert crop['size'] == (896 if city else 336)
    assert crop['scale'] == ((0.36, 1.0) if city else (0.64, 1.0))
    test = cfg.val_dataloader.dataset.pipeline
    assert cfg.test_dataloader.dataset.pipeline == test
    if city:  # released: target_res -1, labels at full resolution
        assert _types(test) == ['LoadImageFromFile', 'Resize', 'LoadAnnotations', 'PackSegInputs']
        assert test[1]['scale'] == (1024, 1024)
    else:  # released: labels resized with the images to 448 (nearest) and scored there
        assert _types(test) == ['LoadImageFromFile', 'LoadAnnotations', 'Resize',
                                'mmpretrain.SetOriShapeToImgShape', 'PackSegInputs']
        assert test[2]['scale'] == (448, 448)
        full = cfg.full_res_label_test_pipeline
        assert _types(full) == ['LoadImageFromFile', 'Resize', 'LoadAnnotations', 'PackSegInputs']
    resize = next(t for t in test if t['type'] == 'Resize')
    assert resize['keep_ratio'] is False and resize['backend'] == 'pillow'
    assert cfg.train_cfg.val_interval == VAL_INTERVAL[data]
    ckpt = cfg.default_hooks.checkpoint
    assert ckpt.save_best == 'mIoU' and ckpt.rule == 'greater'


def test_documented_full_resolution_child_config(tmp_path):
    """The 3-line child config of the ADE20K probe's header gives mmseg's standard evaluation."""
    base = osp.join(CFG_DIR, 'linear_cotap-vit-s16_1xb128-782it_ade20k-336x336.py')
    child = tmp_path / 'full_res.py'
    child.write_text(f"_base_ = ['{base}']\n"
                     'val_dataloader = dict(dataset=dict(pipeline={{_base_.full_res_label_test_'
                     'pipeline}}))\ntest_dataloader = val_dataloader\n')
    cfg = Config.fromfile(str(child))
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        assert _types(loader.dataset.pipeline) == ['LoadImageFromFile', 'Resize',
                                                   'LoadAnnotations', 'PackSegInputs']


def _ade_sample(tmp_path, pipeline_key, test_px=48):
    root = write_ade20k(str(tmp_path / 'ade'), num_train=1, num_val=1, size=64)
    cfg = Config.fromfile(osp.join(CFG_DIR, 'linear_cotap-vit-s16_1xb128-782it_ade20k-336x336.py'))
    pipeline = cfg.get(pipeline_key) if pipeline_key else cfg.val_dataloader.dataset.pipeline
    for t in pipeline:
        if t['type'] == 'Resize':
            t['scale'] = (test_px, test_px)
    with DefaultScope.overwrite_default_scope('mmseg'):
        ds = DATASETS.build(dict(cfg.val_dataloader.dataset, data_root=root, pipeline=pipeline))
        return ds[0]['data_samples']


def test_released_evaluation_scores_at_the_resized_size(tmp_path):
    sample = _ade_sample(tmp_path, None)
    assert sample.gt_sem_seg.data.shape[-2:] == (48, 48)
    assert sample.ori_shape == (48, 48)  # mmseg resizes the logits to this: the label's size
    full = _ade_sample(tmp_path, 'full_res_label_test_pipeline')
    assert full.gt_sem_seg.data.shape[-2:] == (64, 64) and full.ori_shape == (64, 64)


def test_seg_random_resized_crop_cuts_image_and_label_alike():
    rng = np.random.default_rng(0)
    h, w = 60, 80
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = (np.arange(h)[:, None] // 6 * 20 + np.arange(w)[None] // 8).astype(np.uint8)
    t = SegRandomResizedCrop(size=(24, 32), scale=(0.3, 0.9))
    np.random.seed(0)
    areas, ratios = [], []
    for _ in range(30):
        out = t(dict(img=img.copy(), gt_seg_map=label.copy(), seg_fields=['gt_seg_map']))
        x1, y1, x2, y2 = out['crop_bbox']
        assert out['img'].shape == (24, 32, 3) and out['gt_seg_map'].shape == (24, 32)
        assert out['img_shape'] == (24, 32)
        # independent reference: PIL on the same box (image bilinear, label nearest)
        ref_img = Image.fromarray(img[y1:y2, x1:x2]).resize((32, 24), Image.BILINEAR)
        ref_lbl = Image.fromarray(label[y1:y2, x1:x2]).resize((32, 24), Image.NEAREST)
        np.testing.assert_array_equal(out['img'], np.asarray(ref_img))
        np.testing.assert_array_equal(out['gt_seg_map'], np.asarray(ref_lbl))
        assert set(np.unique(out['gt_seg_map'])) <= set(np.unique(label[y1:y2, x1:x2]))
        areas.append((x2 - x1) * (y2 - y1) / (h * w))
        ratios.append((x2 - x1) / (y2 - y1))
    assert 0.28 <= min(areas) and max(areas) <= 0.92 and max(areas) - min(areas) > 0.2
    assert 0.7 <= min(ratios) and max(ratios) <= 1.4
    with pytest.raises(ValueError, match='gt_seg_map has shape'):
        t(dict(img=img, gt_seg_map=label[:10], seg_fields=['gt_seg_map']))
    with pytest.raises(ValueError, match='SegRandomResizedCrop scale'):
        SegRandomResizedCrop(size=32, scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="backend must be 'pillow' or 'cv2'"):
        SegRandomResizedCrop(size=32, backend='pil')


def test_set_ori_shape_needs_the_resized_label():
    out = SetOriShapeToImgShape()(dict(img_shape=(48, 48), ori_shape=(64, 80),
                                       gt_seg_map=np.zeros((48, 48), np.uint8)))
    assert out['ori_shape'] == (48, 48)
    with pytest.raises(ValueError, match='put LoadAnnotations before Resize'):
        SetOriShapeToImgShape()(dict(img_shape=(48, 48), gt_seg_map=np.zeros((64, 80))))


def test_best_mIoU_over_evaluations_is_kept(tmp_path):
    """A shrunk ADE20K probe run, 6 iterations with an evaluation every 2: three mIoU rows,
    and the best one's checkpoint is best_mIoU_iter_<its iteration>.pth."""
    root = write_ade20k(str(tmp_path / 'ade'), num_train=4, num_val=2, size=64)
    pretrain = str(tmp_path / 'pretrain.pth')
    write_pretrain_checkpoint(pretrain)
    cfg = Config.fromfile(osp.join(CFG_DIR, 'linear_cotap-vit-s16_1xb128-782it_ade20k-336x336.py'))
    work_dir = str(tmp_path / 'work_probe_best_of_passes')  # unique visualizer name
    cfg = shrink_seg_config(cfg, root, pretrain, work_dir, iters=6)
    cfg.train_cfg.val_interval = 2
    cfg.optim_wrapper.optimizer.lr = 0.3  # large steps: the evaluations differ
    path = str(tmp_path / 'cfg.py')
    cfg.dump(path)
    load_tool('tools/train.py').main([path])
    (scalars, ) = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(scalars) as f:
        evals = [(r['step'], r['mIoU']) for r in map(json.loads, f) if 'mIoU' in r]
    assert [step for step, _ in evals] == [2, 4, 6]
    best_step = max(evals, key=lambda e: (e[1], -e[0]))[0]  # first of equal values
    assert [osp.basename(p) for p in glob.glob(osp.join(work_dir, 'best_mIoU_*.pth'))] == [
        f'best_mIoU_iter_{best_step}.pth']

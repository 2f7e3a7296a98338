"""The installed stack: every toolbox imports next to cotap_mm, and mmcv's compiled ops work."""
import importlib

import pytest
import torch


@pytest.mark.parametrize('name', ['mmpretrain.models', 'mmseg.models', 'mmdet.models', 'mmcv.ops'])
def test_toolboxes_import(name):
    import cotap_mm  # noqa: F401
    importlib.import_module(name)


def test_plugin_registers_into_mmpretrain():
    import cotap_mm  # noqa: F401
    from mmpretrain.registry import DATASETS, HOOKS, MODELS, TRANSFORMS
    for registry, name in [(MODELS, 'CoTAPViT'), (MODELS, 'ObjectPrototypeNeck'),
                           (MODELS, 'ContinuousAPLoss'), (HOOKS, 'EMATeacherHook'),
                           (HOOKS, 'PlainCheckpointHook'), (TRANSFORMS, 'GeometricMultiView'),
                           (DATASETS, 'SyntheticScenes')]:
        assert registry.get(name) is not None, f'{name} not registered in {registry.name}'


def test_plugin_reachable_from_mmseg_scope():
    import cotap_mm  # noqa: F401
    from mmseg.registry import MODELS as SEG_MODELS
    backbone = SEG_MODELS.build(dict(
        type='mmpretrain.CoTAPViT',
        arch=dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64),
        img_size=32, patch_size=8, out_type='featmap'))
    out = backbone(torch.zeros(1, 3, 32, 32))
    assert out[-1].shape == (1, 32, 4, 4)


def test_mmcv_nms_compiled_op():
    from mmcv.ops import nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [20., 20., 30., 30.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # IoU(box0, box1) = 81 / 119 = 0.68 > 0.5: box1 is suppressed, box2 is disjoint and kept
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert torch.allclose(dets[:, 4], torch.tensor([0.9, 0.7]))
    _, keep = nms(boxes, scores, iou_threshold=0.7)
    assert keep.tolist() == [0, 1, 2]

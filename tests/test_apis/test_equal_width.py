"""cotap_mm.apis.equal_width_control: a baseline's backbone in CoTAP's model, the filter's
prototypes set by CoTAP's k-means on the baseline's own pooled tokens, nothing trained."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from cotap_mm.apis import equal_width_control, prototype_bank
from cotap_mm.evaluation import synthetic_probe_data
from cotap_mm.models.necks.prototype_ops import kmeans_prototypes
from cotap_test_helpers.cotap_checkpoint import DEMO_CONFIG
from cotap_test_helpers.tiny_runs import REPO_ROOT

DINO_CONFIG = osp.join(REPO_ROOT, 'configs/dino/dino_vit-tiny-p8_1xb8-1500it_synthetic.py')


@pytest.fixture(scope='module')
def dino_ckpt(tmp_path_factory):
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    torch.manual_seed(3)
    dino = MODELS.build(Config.fromfile(DINO_CONFIG).model)
    path = str(tmp_path_factory.mktemp('ew') / 'dino.pth')
    torch.save({'state_dict': dino.state_dict(), 'meta': {}}, path)
    return path, dino.backbone.state_dict()


def _images(n: int, size: int = 72):
    return synthetic_probe_data('train', n, 5, size, 8)[0]


def _reference_bank(backbone, images):
    """Tokens entering the last block of a 9x9 grid, each 3x3 block of patches averaged by hand."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens, hw = backbone.forward_pre_last((x - mean) / std)
    assert tuple(hw) == (9, 9)
    b, _, c = tokens.shape
    grid = tokens[:, 1:].reshape(b, 3, 3, 3, 3, c)  # [B, row block, row, col block, col, C]
    return grid.mean(dim=(2, 4)).permute(0, 3, 1, 2)  # [B, C, 3, 3]


def test_backbone_is_the_baselines_and_prototypes_are_kmeans_of_its_tokens(dino_ckpt):
    ckpt, dino_backbone = dino_ckpt
    images = _images(20)
    torch.manual_seed(0)
    model = equal_width_control(DEMO_CONFIG, ckpt, images)
    for k, v in dino_backbone.items():  # the baseline's weights, untouched
        assert torch.equal(model.backbone.state_dict()[k], v), k
    assert bool(model.neck.prototypes_initialized)
    ref_bank = _reference_bank(model.backbone, images)
    assert torch.allclose(prototype_bank(model, images), ref_bank, atol=1e-5)
    cfg = Config.fromfile(DEMO_CONFIG).model  # bank 128 > 20 images: all 20 fill it
    ref = kmeans_prototypes(ref_bank, cfg.neck.num_prototypes, iters=cfg.kmeans_iters,
                            seed=cfg.get('kmeans_seed', 0))  # CoTAP's default
    assert torch.allclose(model.neck.prototypes, ref, atol=1e-5)
    # the filter's own layers are untrained: LayerNorms at their initial values
    assert torch.equal(model.neck.norm_out_patch.weight, torch.ones(192))
    assert torch.equal(model.neck.norm_out_patch.bias, torch.zeros(192))
    x = torch.randn(2, 3, 72, 72)
    assert model.extract_feat(x).shape == (2, 192, 9, 9)
    assert not any(p.requires_grad for p in model.parameters())


def test_bank_is_capped_at_the_configs_bank_size(dino_ckpt, monkeypatch):
    import cotap_mm.apis.equal_width as ew
    seen = []
    real = ew.prototype_bank
    monkeypatch.setattr(ew, 'prototype_bank', lambda m, imgs: seen.append(len(imgs)) or real(m, imgs))
    equal_width_control(DEMO_CONFIG, dino_ckpt[0], _images(20, 32),
                        overrides={'model.bank_size': 17})
    assert seen == [17]


def test_too_few_images_and_a_model_without_the_filter_are_refused(dino_ckpt):
    with pytest.raises(ValueError, match='fewer than num_prototypes=16'):
        equal_width_control(DEMO_CONFIG, dino_ckpt[0], _images(5, 32))
    with pytest.raises(TypeError, match='object-aware filter'):
        equal_width_control(DINO_CONFIG, dino_ckpt[0], _images(20, 32))


def test_a_checkpoint_without_the_backbone_is_named(tmp_path):
    path = str(tmp_path / 'other.pth')
    torch.save({'state_dict': {'head.weight': torch.zeros(2)}}, path)
    with pytest.raises(KeyError, match='other.pth: 54 of the 54 backbone tensors'):
        equal_width_control(DEMO_CONFIG, path, _images(20, 32))

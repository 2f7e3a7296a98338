"""cotap_mm for OpenMMLab's own tools (cotap_mm/openmmlab.py, cotap_mm/registry.py): the model
index and its metafiles, mmpretrain's list_models / get_model / FeatureExtractor on our configs, and
``_base_ = 'cotap_mm::...'`` from a project folder outside the repository (this environment's
install; tests/test_packaging.py does the same against a built wheel)."""
import glob
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
import yaml
from mmengine.config import Config

from cotap_test_helpers.tiny_runs import REPO_ROOT

DEMO = 'cotap_vit-tiny-p8_1xb8-demo_synthetic'
DEMO_CFG = osp.join(REPO_ROOT, 'configs', 'cotap', f'{DEMO}.py')
DINO_CFG = osp.join(REPO_ROOT, 'configs', 'dino', 'dino_vit-tiny-p8_1xb8-1500it_synthetic.py')
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def _metafile_models():
    with open(osp.join(REPO_ROOT, 'model-index.yml')) as f:
        imports = yaml.safe_load(f)['Import']
    models = {}
    for rel in imports:
        with open(osp.join(REPO_ROOT, rel)) as f:
            for m in yaml.safe_load(f)['Models']:
                assert m['Name'] not in models, f'{m["Name"]} twice in the model index'
                models[m['Name']] = m
    return imports, models


def test_model_index_lists_every_method_config():
    imports, models = _metafile_models()
    assert sorted(imports) == sorted(
        osp.relpath(p, REPO_ROOT) for p in glob.glob(osp.join(REPO_ROOT, 'configs/*/metafile.yml')))
    for folder in ('cotap', 'ddssl', 'scfs', 'dino', 'mocov3', 'densecl'):
        for cfg in glob.glob(osp.join(REPO_ROOT, 'configs', folder, '*.py')):
            name = osp.splitext(osp.basename(cfg))[0]
            assert name in models, f'configs/{folder}/{name}.py is not in a metafile'
            assert models[name]['Config'] == f'configs/{folder}/{name}.py'
    for name, m in models.items():
        assert osp.isfile(osp.join(REPO_ROOT, m['Config'])), m['Config']


def test_metafile_carries_paper_numbers_and_converters():
    _, models = _metafile_models()
    s16 = models['cotap_vit-small-p16-dino_4xb28-240k_coco-in1k']
    metrics = {(r['Dataset'], k): v for r in s16['Results'] for k, v in r['Metrics'].items()}
    assert metrics[('COCO-Stuff-27', 'Linear mIoU')] == 50.5
    assert metrics[('COCO-Stuff-27', 'Linear mIoU of the start')] == 38.8
    assert metrics[('ImageNet-1k', 'k-NN Top 1 Accuracy')] == 78.0
    assert metrics[('ImageNet-1k', 'Linear Top 1 Accuracy')] == 79.1
    released = [m for m in models.values() if m['Name'].endswith('_coco-in1k')]
    assert len(released) == 8
    for m in released:
        assert '--src-format cotap-release' in m['Converted From']['Converter']
        # the start converter writes the checkpoint the config loads
        cfg = Config.fromfile(osp.join(REPO_ROOT, m['Config']))
        assert cfg.load_from in m['Metadata']['Start Checkpoint']['Converter']
    assert models['scfs_resnet50_8xb32-200e_in1k']['Results'][0]['Metrics'] == {
        'k-NN Top 1 Accuracy': 65.5}


def test_list_models_and_get_model_find_our_configs():
    import cotap_mm  # noqa: F401
    from mmpretrain import get_model, list_models
    _, models = _metafile_models()
    cotap_names = sorted(n for n in models if 'cotap' in n)
    assert list_models('*cotap*') == cotap_names
    assert set(models) <= set(list_models())  # mmpretrain's own index registers next to ours
    model = get_model(DEMO)
    assert type(model).__name__ == 'CoTAP'
    assert model._config.filename == osp.realpath(DEMO_CFG) or osp.samefile(
        model._config.filename, DEMO_CFG)


def _jpeg(path, h=50, w=70, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    cv2.imwrite(str(path), img)
    return str(path)


def _reference_input(path, size=64):
    """The image as the demo configs' test_pipeline should feed it, by OpenCV directly."""
    bgr = cv2.imread(path)
    rgb = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    return (x - MEAN) / STD


def test_feature_extractor_gives_cotap_2c_features(tmp_path):
    import cotap_mm  # noqa: F401
    from mmpretrain import FeatureExtractor, get_model
    from mmpretrain.registry import MODELS
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(DEMO_CFG).model)
    model.neck.prototypes_initialized.fill_(True)
    ckpt = str(tmp_path / 'cotap.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    img = _jpeg(tmp_path / 'photo.jpg')

    feats = FeatureExtractor(DEMO_CFG, pretrained=ckpt, device='cpu')(img)[0]
    assert feats.shape == (2 * 96, 8, 8)  # ordinary || filtered tokens on the 8 x 8 grid
    model.eval()
    with torch.no_grad():
        ref = model.extract_feat(_reference_input(img))[0]
    torch.testing.assert_close(feats, ref, atol=1e-5, rtol=1e-5)
    # by name from the model index, and get_model(...).extract_feat on the same input
    by_name = FeatureExtractor(DEMO, pretrained=ckpt, device='cpu')(img)[0]
    torch.testing.assert_close(by_name, ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        again = get_model(DEMO, pretrained=ckpt).extract_feat(_reference_input(img))[0]
    torch.testing.assert_close(again, ref)


def test_feature_extractor_on_a_dino_config(tmp_path):
    import cotap_mm  # noqa: F401
    from mmpretrain import FeatureExtractor
    img = _jpeg(tmp_path / 'photo.jpg', 40, 30)
    out = FeatureExtractor(DINO_CFG, pretrained=False, device='cpu')(img)[0]
    assert isinstance(out, tuple) and out[-1].shape[0] == 96


def test_feature_extractor_says_what_a_config_lacks(tmp_path):
    import cotap_mm  # noqa: F401
    from mmpretrain import FeatureExtractor
    cfg = Config.fromfile(DEMO_CFG)
    cfg = Config({k: v for k, v in cfg.to_dict().items() if k != 'test_pipeline'})
    with pytest.raises(KeyError, match='test_pipeline'):
        FeatureExtractor(cfg, pretrained=False, device='cpu')


def test_cotap_scope_base_config_from_a_project_folder(tmp_path):
    """A user config elsewhere inherits ours by package scope; the inherited dicts (scope
    ``cotap_mm``) build through the cotap_mm registries."""
    import cotap_mm  # noqa: F401
    from mmengine.registry import DATASETS, MODELS
    mim_configs = osp.join(osp.dirname(cotap_mm.__file__), '.mim', 'configs')
    assert osp.isdir(mim_configs), (
        f'{mim_configs} is missing: install the checkout (pip install -e . / make setup), which '
        f'links cotap_mm/.mim to configs/, tools/ and model-index.yml')
    user = tmp_path / 'my_cotap.py'
    user.write_text(f"_base_ = 'cotap_mm::cotap/{DEMO}.py'\n"
                    "model = dict(neck=dict(num_prototypes=8))\n"
                    "train_cfg = dict(max_iters=5)\n")
    cfg = Config.fromfile(str(user))
    assert cfg.model.type == 'CoTAP' and cfg.model._scope_ == 'cotap_mm'
    assert cfg.model.neck.num_prototypes == 8 and cfg.train_cfg.max_iters == 5
    assert cfg.default_scope == 'mmpretrain'
    model = MODELS.build(cfg.model)  # MMEngine's root registry, scope taken from _scope_
    assert type(model).__name__ == 'CoTAP' and model.neck.num_prototypes == 8
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    assert type(dataset).__name__ == 'SyntheticScenes'


def test_cotap_scope_registries_resolve_to_mmpretrain():
    import cotap_mm  # noqa: F401
    from mmpretrain.registry import HOOKS as PRETRAIN_HOOKS

    from cotap_mm import registry
    assert registry.MODELS.scope == 'cotap_mm'
    assert registry.MODELS.get('CoTAPViT') is registry.MODELS.parent.get('CoTAPViT')
    assert registry.HOOKS.parent is PRETRAIN_HOOKS
    assert registry.HOOKS.get('EMATeacherHook').__name__ == 'EMATeacherHook'


def test_every_indexed_config_reads_images_at_its_training_size():
    """test_pipeline (what FeatureExtractor and visualize_features.py read images with) resizes to
    the ViT's img_size: 224 for the released runs, 64 for the CPU-sized ones."""
    _, models = _metafile_models()
    for name, m in models.items():
        cfg = Config.fromfile(osp.join(REPO_ROOT, m['Config']))
        types = [t['type'] for t in cfg.test_pipeline]
        assert types == ['LoadImageFromFile', 'Resize', 'PackInputs'], (name, types)
        size = cfg.model.backbone.get('img_size')
        if size is None:  # ResNets: 224 for ImageNet, 64 for the generated scenes
            size = 64 if 'synthetic' in name else 224
        assert tuple(cfg.test_pipeline[1].scale) == (size, size), name

"""tools/analysis_tools/visualize_features.py on a generated scene with a tiny CoTAP checkpoint: the
PNGs it writes (size, content against features computed independently), C / 2C, bad input."""
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from cotap_mm.datasets.synthetic_scenes import generate_scene
from cotap_mm.evaluation.visualization import kmeans_label_map, pca_rgb
from cotap_test_helpers.tiny_runs import REPO_ROOT
from cotap_test_helpers.tool_runs import load_tool

DEMO_CFG = osp.join(REPO_ROOT, 'configs', 'cotap', 'cotap_vit-tiny-p8_1xb8-demo_synthetic.py')
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
TITLE = 12  # title strip of save_panels
PANEL = 192  # 64 px images enlarged 3x (--min-panel-size 192)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    import cotap_mm  # noqa: F401
    from mmpretrain.registry import MODELS
    root = tmp_path_factory.mktemp('vis')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(DEMO_CFG).model)
    model.neck.prototypes_initialized.fill_(True)
    model.eval()
    ckpt = str(root / 'cotap.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    plain = MODELS.build(Config.fromfile(DEMO_CFG).model)  # prototypes never initialised
    plain_ckpt = str(root / 'plain.pth')
    torch.save({'state_dict': plain.state_dict()}, plain_ckpt)
    img = generate_scene(7, size=80)[0]  # RGB uint8
    path = str(root / 'scene.jpg')
    cv2.imwrite(path, img[:, :, ::-1])
    return dict(root=root, model=model, ckpt=ckpt, plain_ckpt=plain_ckpt, image=path)


def _reference_2c(model, path):
    bgr = cv2.imread(path)
    rgb = cv2.resize(bgr, (64, 64), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        return model.extract_feat((x - MEAN) / STD)[0]


def _panel(canvas, i):
    return canvas[TITLE:, i * PANEL:(i + 1) * PANEL]


def test_writes_pca_similarity_and_kmeans_pictures(data):
    out = str(data['root'] / 'out')
    written = load_tool('tools/analysis_tools/visualize_features.py').main(
        [DEMO_CFG, data['ckpt'], data['image'], '--out', out, '--points', '10,70', '75,5',
         '--kmeans', '3', '6'])
    assert written == {'C': [osp.join(out, 'scene_C.png')], '2C': [osp.join(out, 'scene_2C.png')]}
    ref = _reference_2c(data['model'], data['image'])
    for name in ('C', '2C'):
        canvas = np.asarray(Image.open(osp.join(out, f'scene_{name}.png')).convert('RGB'))
        # image | pca | 2 similarity maps | 2 k-means maps, 192 px each under the titles
        assert canvas.shape == (TITLE + PANEL, 6 * PANEL, 3)
        for i in range(6):
            assert _panel(canvas, i).std() > 5, f'{name}: panel {i} is flat'
    canvas = np.asarray(Image.open(osp.join(out, 'scene_2C.png')).convert('RGB'))
    # the 2C pictures are those of CoTAP's extract_feat on the resized image (24 px per patch)
    np.testing.assert_array_equal(_panel(canvas, 1)[::24, ::24], pca_rgb(ref))
    km = _panel(canvas, 5)[::24, ::24]
    labels = kmeans_label_map(ref, 6)
    assert len({tuple(c) for c in km.reshape(-1, 3)}) == len(np.unique(labels))
    for a in np.unique(labels):
        assert len({tuple(c) for c in km[labels == a]}) == 1
    # query pixels (10, 70) and (75, 5) of the 80 px image: cells (7, 1) and (0, 7), marked red
    image_panel = _panel(canvas, 0)
    assert (image_panel[7 * 24, 1 * 24] == [255, 0, 0]).all()
    assert (image_panel[0, 7 * 24] == [255, 0, 0]).all()


def test_checkpoint_without_filter_gives_only_c(data):
    out = str(data['root'] / 'plain')
    written = load_tool('tools/analysis_tools/visualize_features.py').main(
        [DEMO_CFG, data['plain_ckpt'], data['image'], '--out', out, '--kmeans'])
    assert list(written) == ['C']
    canvas = np.asarray(Image.open(written['C'][0]))
    assert canvas.shape[1] == 3 * PANEL  # image | pca | similarity of the central patch


def test_bad_input_is_named(data):
    tool = load_tool('tools/analysis_tools/visualize_features.py')
    with pytest.raises(FileNotFoundError, match='nope.jpg'):
        tool.main([DEMO_CFG, data['ckpt'], str(data['root'] / 'nope.jpg'), '--out',
                   str(data['root'] / 'x')])
    with pytest.raises(ValueError, match='outside the 80x80 image'):
        tool.main([DEMO_CFG, data['ckpt'], data['image'], '--out', str(data['root'] / 'x'),
                   '--points', '80,3'])
    with pytest.raises(ValueError, match='2C features'):
        tool.main([DEMO_CFG, data['plain_ckpt'], data['image'], '--out', str(data['root'] / 'x'),
                   '--features', '2C'])
    with pytest.raises(SystemExit):
        tool.parse_args([DEMO_CFG, 'none', 'a.jpg', '--out', 'x', '--points', '3'])

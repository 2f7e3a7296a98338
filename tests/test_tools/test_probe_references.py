
import torch

from cotap_mm.evaluation.linear_probe import normalize_images
from cotap_test_helpers.tool_runs import load_tool


def _tool():
    return load_tool('tools/analysis_tools/probe_references.py')


def test_raw_patch_features_are_the_patch_pixels():
    tool = _tool()
    x = torch.randint(0, 256, (2, 3, 16, 24)).float()
    f = tool.raw_patch_features(x, patch=8)
    assert f.shape == (2, 3 * 64, 2, 3)
    ref = normalize_images(x)[1, :, 8:16, 16:24].reshape(-1)  # patch (row 1, col 2), channel-major
    assert torch.allclose(f[1, :, 1, 2], ref)


def test_texture_statistics_of_a_flat_image():
    tool = _tool()
    x = torch.full((1, 3, 32, 32), 200.)
    f = tool.texture_statistics(x)
    assert f.shape == (1, 15, 4, 4)
    inner = f[0, :, 1:3, 1:3]  # away from the zero padding: no gradients, mean = the value
    assert torch.allclose(inner[6:], torch.zeros_like(inner[6:]), atol=1e-6)
    assert torch.allclose(inner[0], normalize_images(x)[0, 0, :2, :2])


def test_tool_runs_and_supervision_helps():
    rows = _tool().main(['--iters', '30', '--image-iters', '5', '--train-images', '40',
                         '--probe-train', '12', '--probe-val', '6', '--probe-epochs', '3',
                         '--image-size', '48'])
    assert set(rows) == {'raw pixels', 'texture statistics', 'random ViT',
                         'image-level supervised ViT (5 it)', 'supervised ViT (30 it)'}
    for r in rows.values():
        assert 0.0 <= r['mIoU'] <= 1.0
    # 30 supervised steps already beat the random ViT on pixel accuracy (it learns the background)
    assert rows['supervised ViT (30 it)']['pixel_acc'] > rows['random ViT']['pixel_acc']

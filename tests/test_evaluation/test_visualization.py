import numpy as np
import pytest
import torch
from PIL import Image

from cotap_mm.evaluation.visualization import pca_rgb, save_feature_figure, similarity_map


def _three_region_features(c=10, h=6, w=9, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(c, 3)))  # 3 orthonormal directions
    region = np.zeros((h, w), dtype=int)
    region[:, 3:6] = 1
    region[:, 6:] = 2
    f = q[:, region] * 5.0 + noise * rng.normal(size=(c, h, w))
    return f, region


def test_pca_three_regions_three_colours():
    f, region = _three_region_features()
    rgb = pca_rgb(f)
    assert rgb.shape == (6, 9, 3) and rgb.dtype == np.uint8
    colours = []
    for r in range(3):
        px = rgb[region == r]
        assert (px == px[0]).all(), 'one colour per region'
        colours.append(tuple(px[0]))
    assert len(set(colours)) == 3
    # with mild noise the regions stay well separated on the first two components (3 centred
    # region means span 2 dimensions; the third component is noise, stretched by min-max)
    fn, _ = _three_region_features(noise=0.05)
    rgb_n = pca_rgb(torch.from_numpy(fn)).astype(float)[..., :2]
    means = [rgb_n[region == r].mean(0) for r in range(3)]
    spread = max(rgb_n[region == r].std(0).max() for r in range(3))
    gaps = [np.abs(means[a] - means[b]).max() for a, b in ((0, 1), (0, 2), (1, 2))]
    assert min(gaps) > 10 * spread


def test_pca_degenerate_and_bad_input():
    flat = np.ones((4, 3, 3))
    np.testing.assert_array_equal(pca_rgb(flat), np.zeros((3, 3, 3), np.uint8))
    two = np.zeros((2, 2, 2))
    two[0, 0, 0] = 1.0
    out = pca_rgb(two)  # C = 2 < 3: third channel constant
    assert (out[..., 2] == 0).all() and out[..., 0].max() == 255
    with pytest.raises(ValueError, match=r'\[C, h, w\]'):
        pca_rgb(np.zeros((3, 3)))


def test_similarity_map_peaks_at_query():
    h, w = 5, 7
    f = np.eye(h * w).reshape(h * w, h, w)  # one-hot of the position
    sim = similarity_map(f, (2, 4))
    assert sim.shape == (h, w)
    assert sim[2, 4] == pytest.approx(1.0)
    assert np.unravel_index(sim.argmax(), sim.shape) == (2, 4)
    assert np.abs(np.delete(sim.ravel(), 2 * w + 4)).max() == 0.0
    # cross-image map: brute-force cosine
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 3, 3)), rng.normal(size=(4, 2, 5))
    s = similarity_map(a, (1, 2), torch.from_numpy(b))
    q = a[:, 1, 2]
    for y in range(2):
        for x in range(5):
            ref = q @ b[:, y, x] / np.linalg.norm(q) / np.linalg.norm(b[:, y, x])
            assert s[y, x] == pytest.approx(ref, abs=1e-6)
    with pytest.raises(ValueError, match='point'):
        similarity_map(a, (3, 0))
    with pytest.raises(ValueError, match='same C'):
        similarity_map(a, (0, 0), np.zeros((5, 2, 2)))


def test_save_feature_figure(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    f, _ = _three_region_features(h=3, w=4)
    path = str(tmp_path / 'sub' / 'fig.png')
    canvas = save_feature_figure(path, img, f, point=(1, 2))
    read = np.asarray(Image.open(path))
    assert read.shape == (48, 192, 3)
    np.testing.assert_array_equal(read, canvas)
    # middle panel = nearest-upsampled PCA colours
    np.testing.assert_array_equal(read[:, 64:128][::16, ::16], pca_rgb(f))
    # query patch outlined in red on the first panel
    assert (read[16, 32:48] == [255, 0, 0]).all()
    # cross-image version
    save_feature_figure(path, img, f, features_b=f[:, :2], image_b=img[:20, :30])
    assert np.asarray(Image.open(path)).shape == (48, 192, 3)
    with pytest.raises(ValueError, match='together'):
        save_feature_figure(path, img, f, features_b=f)

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


def _two_regions(h=6, w=8):
    """Features of two regions (left / right half) with small noise: the expected 2-means split."""
    rng = np.random.default_rng(0)
    f = 0.01 * rng.standard_normal((5, h, w))
    f[0, :, :w // 2] += 1.0
    f[1, :, w // 2:] += 1.0
    return f


def test_kmeans_label_map_finds_regions_in_raster_order():
    from cotap_mm.evaluation.visualization import kmeans_label_map
    f = _two_regions()
    labels = kmeans_label_map(f, 2)
    expected = np.zeros((6, 8), dtype=np.int64)
    expected[:, 4:] = 1  # the cluster of the first position (0, 0) is 0
    np.testing.assert_array_equal(labels, expected)
    # the same split whichever half comes first, and for a torch tensor
    np.testing.assert_array_equal(kmeans_label_map(torch.from_numpy(f[:, :, ::-1].copy()), 2),
                                  expected)
    # cosine k-means: scaling a feature vector does not move it to another cluster
    g = f.copy()
    g[:, 0, 0] *= 50
    np.testing.assert_array_equal(kmeans_label_map(g, 2), expected)
    assert set(np.unique(kmeans_label_map(f, 5))) == set(range(5))
    with pytest.raises(ValueError, match='num_clusters'):
        kmeans_label_map(f, 49)


def test_label_colors_distinct_per_label():
    from cotap_mm.evaluation.visualization import label_colors
    labels = np.arange(12).reshape(3, 4)
    rgb = label_colors(labels)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    assert len({tuple(c) for c in rgb.reshape(-1, 3)}) == 12
    np.testing.assert_array_equal(label_colors(np.full((2, 2), 3)), np.broadcast_to(rgb[0, 3],
                                                                                    (2, 2, 3)))
    with pytest.raises(ValueError, match='non-negative int'):
        label_colors(np.array([[-1, 0]]))


def test_grid_point_maps_pixels_to_cells():
    from cotap_mm.evaluation.visualization import grid_point
    assert grid_point((0, 0), (64, 96), (8, 12)) == (0, 0)
    assert grid_point((95.9, 63.9), (64, 96), (8, 12)) == (7, 11)
    assert grid_point((40, 9), (64, 96), (8, 12)) == (1, 5)  # x 40 / 8 px = col 5, y 9 / 8 = row 1
    with pytest.raises(ValueError, match='outside'):
        grid_point((96, 0), (64, 96), (8, 12))


def test_feature_panels_and_save_panels(tmp_path):
    from PIL import Image

    from cotap_mm.evaluation.visualization import (feature_panels, kmeans_label_map, pca_rgb,
                                                   save_panels, similarity_map)
    f = _two_regions()
    img = np.full((48, 64, 3), 128, dtype=np.uint8)
    panels = feature_panels(img, f, cells=[(0, 0), (5, 7)], kmeans_k=[2, 3])
    assert [t for t, _ in panels] == ['image', 'pca', 'sim 0,0', 'sim 5,7', 'kmeans 2',
                                      'kmeans 3']
    assert all(p.shape == (48, 64, 3) and p.dtype == np.uint8 for _, p in panels)
    # each 8 x 8 pixel block shows its cell (nearest upsampling)
    np.testing.assert_array_equal(panels[1][1][::8, ::8], pca_rgb(f))
    sim = similarity_map(f, (0, 0))
    assert (panels[2][1][4, 4] != panels[2][1][4, 60]).any()  # similar left, dissimilar right
    assert sim[0, 0] > 0.99 and sim[0, 7] < 0.1
    km = panels[4][1][::8, ::8]
    labels = kmeans_label_map(f, 2)
    for a in range(2):
        assert len({tuple(c) for c in km[labels == a]}) == 1
    assert (km[labels == 0][0] != km[labels == 1][0]).any()
    assert (panels[0][1][0, 0] == [255, 0, 0]).all()  # the query cell (0, 0) is marked
    out = tmp_path / 'a' / 'fig.png'
    canvas = save_panels(str(out), panels)
    assert canvas.shape == (12 + 48, 6 * 64, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(out).convert('RGB')), canvas)
    np.testing.assert_array_equal(canvas[12:, 64:128], panels[1][1])
    with pytest.raises(ValueError, match='outside'):
        feature_panels(img, f, cells=[(6, 0)])
    with pytest.raises(ValueError, match='one'):
        save_panels(str(out), [('a', img), ('b', img[:8])])


def test_feature_panels_skip_k_above_the_positions_with_a_warning():
    from mmengine.logging import MMLogger

    from cotap_mm.evaluation.visualization import feature_panels
    img = np.zeros((16, 16, 3), dtype=np.uint8)
    f = np.random.default_rng(0).standard_normal((4, 2, 2))
    logger = MMLogger.get_current_instance()
    records = []
    handler = __import__('logging').Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        panels = feature_panels(img, f, kmeans_k=[3, 8])
    finally:
        logger.removeHandler(handler)
    assert [t for t, _ in panels] == ['image', 'pca', 'sim 1,1', 'kmeans 3']
    assert any('K=8 skipped' in r.getMessage() and '2x2' in r.getMessage() for r in records)

"""cotap_mm.apis.dense_scores / dense_comparison: every protocol on one feature set equals the
protocol functions called on independently extracted features, and the linear column of a row is the
number the earlier demo reported (``probe_checkpoint``)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cotap_mm.apis import (DenseProtocolSettings, probe_checkpoint, score_checkpoint_rows,
                           score_equal_width_control, score_extractor)
from cotap_mm.evaluation import dense_linear_probe, synthetic_probe_data
from cotap_mm.evaluation.nn_retrieval import nn_retrieval_eval
from cotap_mm.evaluation.overclustering import overclustering_eval
from cotap_test_helpers.cotap_checkpoint import (DEMO_CONFIG, build_tiny_cotap,
                                                 save_cotap_checkpoint)

DEMO_ARCH = dict(embed_dims=96, num_layers=4, num_heads=3, feedforward_channels=384)
SETTINGS = dict(linear_epochs=2, linear_lr=1e-2, clusters=(12, ), kmeans_iters=10, nn_k=5)


def _pooled_pixels(images: torch.Tensor) -> torch.Tensor:
    """A frozen 'extractor' without a model: 8x8 average-pooled pixels, [B, 3, H/8, W/8]."""
    return F.avg_pool2d(images / 255.0, 8)


@pytest.fixture(scope='module')
def data():
    train = synthetic_probe_data('train', 16, 1, 32, 8)  # >= the filter's 16 prototypes
    val = synthetic_probe_data('val', 4, 1, 32, 8)
    return train, val


def test_score_extractor_equals_each_protocol_on_its_own(data):
    train, val = data
    s = DenseProtocolSettings(seed=3, **SETTINGS)
    res = score_extractor(_pooled_pixels, train[:2], val[:2], 9, s, val[2])
    ref_lin = dense_linear_probe(_pooled_pixels, train[:2], val[:2], 9, epochs=2, lr=1e-2, seed=3)
    assert res['linear']['mIoU'] == pytest.approx(ref_lin['mIoU'], abs=1e-12)
    tr_f = _pooled_pixels(torch.from_numpy(train[0]).permute(0, 3, 1, 2).float())
    va_f = _pooled_pixels(torch.from_numpy(val[0]).permute(0, 3, 1, 2).float())
    ref_nn = nn_retrieval_eval(tr_f, train[1], va_f, val[1], 9, None, 5, 0.02, seed=3)
    assert res['nn']['mIoU'] == pytest.approx(ref_nn['mIoU'], abs=1e-12)
    assert res['nn']['memory_entries'] == 16 * 16  # every patch of the 16 training images
    for key, (k, matching) in (('majority_K12', (12, 'majority')),
                               ('hungarian_K9', (9, 'hungarian'))):
        ref = overclustering_eval(va_f, val[1], 9, k, matching, seed=3, iters=10)
        assert res['overclustering'][key]['mIoU'] == pytest.approx(ref['mIoU'], abs=1e-12)
    assert res['feature_shape'] == [3, 4, 4] and res['val_feats'].shape == (4, 3, 4, 4)
    assert 0 < res['dispersion']['dispersion']


def test_settings_refuse_an_unknown_protocol():
    with pytest.raises(ValueError, match="unknown protocols \\['knn'\\]"):
        DenseProtocolSettings(protocols=('linear', 'knn'))


def test_only_the_asked_protocols_run(data):
    train, val = data
    res = score_extractor(_pooled_pixels, train[:2], val[:2], 9,
                          DenseProtocolSettings(protocols=('nn', ), nn_k=3), None)
    assert 'nn' in res and 'linear' not in res and 'overclustering' not in res


def test_rows_of_a_cotap_checkpoint_and_the_equal_width_control(data, tmp_path, one_thread):
    train, val = data
    ckpt = save_cotap_checkpoint(build_tiny_cotap(DEMO_ARCH, img_size=32, num_prototypes=16),
                                 str(tmp_path / 'cotap.pth'))
    s = DenseProtocolSettings(seed=0, **SETTINGS)
    rows = score_checkpoint_rows('cotap', DEMO_CONFIG, ckpt, train, val, s)
    assert [(r['name'], r['features'], r['feature_shape'][0]) for r, _ in rows] == [
        ('cotap', 'C', 96), ('cotap', '2C', 192)]
    # the 2C linear number is the earlier demo's probe of CoTAP (its own extract_feat)
    old = probe_checkpoint(DEMO_CONFIG, ckpt, train, val, epochs=2, lr=1e-2, seed=0)
    assert rows[1][0]['mIoU'] == pytest.approx(old['mIoU'], abs=1e-12)
    assert rows[1][0]['oc_mIoU'] == rows[1][0]['protocols']['overclustering']['majority_K12'][
        'mIoU']
    # the equal-width control of CoTAP's own backbone: 2C, its filter re-initialised by k-means
    row, feats = score_equal_width_control('ew', DEMO_CONFIG, ckpt, train, val, s)
    assert row['features'] == '2C' and feats.shape == (4, 192, 4, 4)
    assert not np.isclose(row['nn_mIoU'], float('nan'))

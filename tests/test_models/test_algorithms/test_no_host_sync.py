"""The training step reads nothing back from the device (review aid for ``.item()`` / ``bool()``).

On a GPU such a read stalls the step (``torch.cuda.set_sync_debug_mode('error')`` flags it). On the
CPU of CI the same reads are recorded instead: every ``Tensor.item / tolist / __bool__ / __int__ /
__float__ / __index__`` called during one ``loss()`` must come from the allowed CPU-only sites.
Boolean-mask indexing (the foreground patches entering CoTAP's queue, a data-dependent size) is
not seen here; docs/cotap.md names it.
"""
import os.path as osp
import traceback

import pytest
import torch
from mmengine.config import Config
from mmpretrain.registry import MODELS

import cotap_mm  # noqa: F401
from cotap_test_helpers.view_batches import geometric_view_batch, independent_view_batch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
CONFIGS = {
    'cotap': 'configs/cotap/cotap_vit-tiny-p8_1xb8-demo_synthetic.py',
    'dino': 'configs/dino/dino_vit-tiny-p8_1xb8-1500it_synthetic.py',
}
# (file, function) of host reads on tensors that live on the CPU on every machine
ALLOWED = {
    ('pair_selection.py', 'random_derangements'),  # rejection sampling with a CPU generator
    ('cluster_prediction.py', 'neighbor_code_loss'),  # checks a partner list given on the CPU
}
READS = ('item', 'tolist', '__bool__', '__int__', '__float__', '__index__')


def _record_reads(fn):
    """Run ``fn()``; return the (file, function) of every host read made in cotap_mm."""
    seen, orig = [], {n: getattr(torch.Tensor, n) for n in READS}

    def patched(name):
        def read(self, *args, **kwargs):
            for frame in reversed(traceback.extract_stack()[:-1]):
                if f'{osp.sep}cotap_mm{osp.sep}' in frame.filename:
                    seen.append((osp.basename(frame.filename), frame.name, frame.lineno))
                    break
            return orig[name](self, *args, **kwargs)
        return read

    for name in READS:
        setattr(torch.Tensor, name, patched(name))
    try:
        fn()
    finally:
        for name in READS:
            setattr(torch.Tensor, name, orig[name])
    return seen


@pytest.mark.parametrize('algo', ['cotap', 'dino'])
def test_a_training_step_reads_nothing_back(algo):
    cfg = Config.fromfile(osp.join(REPO, CONFIGS[algo]))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    if algo == 'cotap':
        inputs, samples = geometric_view_batch(4, 2, 2, 64, 32, 0, 0.3)
    else:
        inputs, samples = independent_view_batch(L=2, seed=0)
    for ds in samples:  # what PackGeometricViews writes for the models to read on the host
        ds.set_metainfo(dict(teacher_view_order=tuple(
            int(i) for i in ds.get('teacher_view_indices', torch.arange(2)))))
    for _ in range(2):  # past the warm-ups that start Sinkhorn and fill the queues
        model.loss(inputs, samples)
    reads = _record_reads(lambda: model.loss(inputs, samples)['loss_' + (
        'cotap' if algo == 'cotap' else 'dino')].backward())
    unexpected = sorted({r for r in reads if r[:2] not in ALLOWED})
    assert not unexpected, f'host reads in the training step: {unexpected}'


def test_the_probe_sees_a_read():
    """The probe itself: an ``.item()`` in package code is recorded with its site."""
    from cotap_mm.models.utils.feature_queue import FeatureQueue
    q = FeatureQueue(size=4, dim=2, split_across_ranks=False)
    reads = _record_reads(lambda: q.count.item() + len(q))
    assert reads == []  # the test's own .item() is outside cotap_mm; len() uses the host copy
    reads = _record_reads(lambda: q.enqueue(torch.ones(3, 2)))
    assert reads == []
    from cotap_mm.models.losses.functional import cluster_prediction
    reads = _record_reads(lambda: cluster_prediction.neighbor_code_loss(
        torch.randn(1, 2, 3), torch.softmax(torch.randn(1, 2, 3), -1), [1, 0]))
    assert [r[:2] for r in reads] == [('cluster_prediction.py', 'neighbor_code_loss')]

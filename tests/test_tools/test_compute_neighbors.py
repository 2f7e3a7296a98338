"""tools/misc/compute_neighbors.py on a tiny COCO-layout folder: 1 process, torchrun x 2 (gloo)."""
import os
import os.path as osp
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import cotap_mm  # noqa: F401
from cotap_mm.datasets.neighbors import read_neighbors
from cotap_test_helpers.tiny_runs import REPO_ROOT, free_port, run, run_env
from cotap_test_helpers.tool_runs import load_tool
from mmpretrain.registry import MODELS

TOOL = osp.join(REPO_ROOT, 'tools', 'misc', 'compute_neighbors.py')
K = 3
N_DISTINCT = 8
DUPLICATES = {8: 0, 9: 3}  # image 8 is a byte copy of image 0, image 9 of image 3
BACKBONE = dict(type='CoTAPViT', arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                                           feedforward_channels=64), img_size=32, patch_size=8)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('knn')
    img_dir = tmp / 'coco' / 'train2017'
    os.makedirs(img_dir)
    rng = np.random.default_rng(0)
    for i in range(N_DISTINCT):  # 36 x 44: the tool must resize to 32 x 32
        arr = rng.integers(0, 256, size=(36, 44, 3), dtype=np.uint8)
        Image.fromarray(arr).save(img_dir / f'{i:012d}.jpg')
    for dup, src in DUPLICATES.items():
        shutil.copy(img_dir / f'{src:012d}.jpg', img_dir / f'{dup:012d}.jpg')
    cfg = tmp / 'tiny_vit.py'
    cfg.write_text(f'model = dict(type="CoTAP", backbone={BACKBONE!r})\n')
    torch.manual_seed(123)
    backbone = MODELS.build(BACKBONE)
    state = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    state['neck.unused'] = torch.zeros(1)  # other modules: ignored
    state['backbone.unused'] = torch.zeros(1)  # unknown backbone key: warned about
    ckpt = tmp / 'ckpt.pth'
    torch.save(dict(state_dict=state, meta=dict()), ckpt)
    return dict(tmp=tmp, root=str(tmp / 'coco'), cfg=str(cfg), ckpt=str(ckpt),
                state={k: v for k, v in backbone.state_dict().items()})


def _args(setup, out, checkpoint=True):
    args = [setup['cfg'], '--data-root', setup['root'], '--data-prefix', 'train2017',
            '--out', out, '-k', str(K), '--img-size', '32', '--batch-size', '3',
            '--num-workers', '0', '--device', 'cpu']
    return args + (['--checkpoint', setup['ckpt']] if checkpoint else [])


def reference_features(setup) -> np.ndarray:
    """CLS tokens of the same weights, computed here with PIL + the backbone's own forward."""
    model = MODELS.build(dict(BACKBONE, out_type='cls_token'))
    model.load_state_dict(setup['state'])
    model.eval()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    imgs = []
    for i in range(N_DISTINCT + len(DUPLICATES)):
        img = Image.open(osp.join(setup['root'], 'train2017', f'{i:012d}.jpg')).convert('RGB')
        imgs.append(np.asarray(img.resize((32, 32), Image.BILINEAR)))
    x = (torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() - mean) / std
    with torch.no_grad():
        return model(x)[-1].double().numpy()


def brute_force_sims(feats: np.ndarray) -> np.ndarray:
    """Cosine similarity matrix, the diagonal (self) set to -inf, by a double loop."""
    n = len(feats)
    sims = np.full((n, n), -np.inf)
    for i in range(n):
        for j in range(n):
            if i != j:
                sims[i, j] = feats[i] @ feats[j] / (np.linalg.norm(feats[i]) *
                                                    np.linalg.norm(feats[j]))
    return sims


def canonical(nb: np.ndarray) -> np.ndarray:
    """Neighbour ids with duplicates mapped to their original (ties among copies are unordered)."""
    out = nb.copy()
    for dup, src in DUPLICATES.items():
        out[nb == dup] = src
    return out


@pytest.fixture(scope='module')
def single_run(setup):
    out = str(setup['tmp'] / 'single.npz')
    proc = run([sys.executable, TOOL] + _args(setup, out))
    return out, proc.stdout


def test_single_process_matches_brute_force(setup, single_run):
    out, stdout = single_run
    assert f'{N_DISTINCT + 2}/{N_DISTINCT + 2}' in stdout and 'task/s' in stdout  # progress bar
    assert '1 unused keys' in stdout
    table = read_neighbors(out)
    n = N_DISTINCT + len(DUPLICATES)
    assert table.img_paths == [f'train2017/{i:012d}.jpg' for i in range(n)]
    assert table.neighbors.shape == (n, K) and table.meta['k'] == K
    assert table.meta['checkpoint'] == setup['ckpt'] and table.meta['img_size'] == 32
    sims = brute_force_sims(reference_features(setup))
    ref_topk = -np.sort(-sims, axis=1)[:, :K]
    # the chosen neighbours have the brute-force top-k similarities, in order (tie-tolerant)
    np.testing.assert_allclose(np.take_along_axis(sims, table.neighbors, 1), ref_topk,
                               atol=1e-5)
    np.testing.assert_allclose(table.similarities, ref_topk, atol=1e-5)
    for dup, src in DUPLICATES.items():  # copies are each other's nearest neighbour
        assert table.neighbors[dup, 0] == src and table.neighbors[src, 0] == dup
        assert table.similarities[dup, 0] == pytest.approx(1.0, abs=1e-5)


def test_torchrun_two_processes_equals_one(setup, single_run):
    out = str(setup['tmp'] / 'dist.npz')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
           '--master_port', str(free_port()), TOOL] + _args(setup, out) + ['--launcher', 'pytorch']
    proc = run(cmd, env=run_env({'CUDA_VISIBLE_DEVICES': ''}))
    assert 'on 2 rank(s)' in proc.stdout
    one, two = read_neighbors(single_run[0]), read_neighbors(out)
    assert two.meta['world_size'] == 2 and one.img_paths == two.img_paths
    np.testing.assert_array_equal(canonical(two.neighbors), canonical(one.neighbors))
    np.testing.assert_allclose(two.similarities, one.similarities, atol=1e-5)


def _load_tool():
    return load_tool('tools/misc/compute_neighbors.py', '_compute_neighbors_tool')


def test_without_checkpoint_in_process_and_errors(setup):
    tool = _load_tool()
    a = tool.main(_args(setup, str(setup['tmp'] / 'a.json'), checkpoint=False))
    b = tool.main(_args(setup, str(setup['tmp'] / 'b.npz'), checkpoint=False) + ['--seed', '0'])
    ta, tb = read_neighbors(a), read_neighbors(b)
    assert ta.meta['checkpoint'] is None
    np.testing.assert_array_equal(canonical(ta.neighbors), canonical(tb.neighbors))  # seeded
    for dup, src in DUPLICATES.items():
        assert ta.neighbors[dup, 0] == src and ta.neighbors[src, 0] == dup
    with pytest.raises(KeyError, match='ckpt.pth') as e:
        tool.main(_args(setup, str(setup['tmp'] / 'c.npz')) + ['--checkpoint-prefix', 'teacher.'])
    assert "'teacher.'" in str(e.value)
    with pytest.raises(ValueError, match='need more than k=10'):
        tool.main(_args(setup, str(setup['tmp'] / 'c.npz')) + ['-k', '10'])
    with pytest.raises(SystemExit):
        tool.main(_args(setup, str(setup['tmp'] / 'c.pkl')))
    assert tool.shard_bounds(10, 3, 0) == (0, 4) and tool.shard_bounds(10, 3, 2) == (8, 10)
    assert tool.shard_bounds(2, 3, 2) == (2, 2)

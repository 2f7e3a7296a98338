"""tools/misc/compute_neighbors.py on a tiny COCO-layout folder: 1 process, torchrun x 2 (gloo).

Default (released, STEGO layout): mean-pooled final-norm patch tokens, shorter side resized with
nearest sampling + centre crop, the image itself in column 0. Option: CLS token, squashed images,
the image itself excluded."""
import os
import os.path as osp
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

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


OLD_OPTIONS = ['--feature', 'cls', '--no-include-self', '--resize', 'squash']


def _args(setup, out, checkpoint=True):
    args = [setup['cfg'], '--data-root', setup['root'], '--data-prefix', 'train2017',
            '--out', out, '-k', str(K), '--img-size', '32', '--batch-size', '3',
            '--num-workers', '0', '--device', 'cpu']
    return args + (['--checkpoint', setup['ckpt']] if checkpoint else [])


def reference_features(setup, feature='patch-mean') -> np.ndarray:
    """Features of the same weights, computed here with the backbone's own forward.

    'patch-mean' as STEGO's precompute_knns: torchvision Resize(32, NEAREST) + CenterCrop(32), the
    final-norm patch-token map averaged; 'cls': PIL bilinear 32 x 32, the final-norm CLS token.
    """
    out_type = 'featmap' if feature == 'patch-mean' else 'cls_token'
    model = MODELS.build(dict(BACKBONE, out_type=out_type))
    model.load_state_dict(setup['state'])
    model.eval()
    stego = T.Compose([T.Resize(32, T.InterpolationMode.NEAREST), T.CenterCrop(32)])
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    imgs = []
    for i in range(N_DISTINCT + len(DUPLICATES)):
        img = Image.open(osp.join(setup['root'], 'train2017', f'{i:012d}.jpg')).convert('RGB')
        img = stego(img) if feature == 'patch-mean' else img.resize((32, 32), Image.BILINEAR)
        imgs.append(np.asarray(img))
    x = (torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() - mean) / std
    with torch.no_grad():
        out = model(x)[-1]
    if feature == 'patch-mean':
        assert out.shape[2:] == (4, 4)
        out = out.mean((2, 3))
    return out.double().numpy()


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
    """Default: STEGO layout, column 0 the image itself, then its K - 1 nearest others."""
    out, stdout = single_run
    assert f'{N_DISTINCT + 2}/{N_DISTINCT + 2}' in stdout and 'task/s' in stdout  # progress bar
    assert '1 unused keys' in stdout and 'image itself in column 0' in stdout
    table = read_neighbors(out)
    n = N_DISTINCT + len(DUPLICATES)
    assert table.img_paths == [f'train2017/{i:012d}.jpg' for i in range(n)]
    assert table.neighbors.shape == (n, K) and table.meta['k'] == K
    assert table.meta['checkpoint'] == setup['ckpt'] and table.meta['img_size'] == 32
    assert table.includes_self and table.meta['feature'] == 'patch-mean'
    assert table.meta['resize'] == 'stego'
    np.testing.assert_array_equal(table.neighbors[:, 0], np.arange(n))
    np.testing.assert_allclose(table.similarities[:, 0], 1.0, atol=1e-5)
    sims = brute_force_sims(reference_features(setup, 'patch-mean'))
    ref_topk = -np.sort(-sims, axis=1)[:, :K - 1]
    # the other columns have the brute-force top-(K-1) similarities, in order (tie-tolerant)
    np.testing.assert_allclose(np.take_along_axis(sims, table.neighbors[:, 1:], 1), ref_topk,
                               atol=1e-5)
    np.testing.assert_allclose(table.similarities[:, 1:], ref_topk, atol=1e-5)
    for dup, src in DUPLICATES.items():  # copies come right after the image itself
        assert table.neighbors[dup, 1] == src and table.neighbors[src, 1] == dup
        assert table.similarities[dup, 1] == pytest.approx(1.0, abs=1e-5)


def test_cls_feature_without_self_option(setup):
    """The earlier cotap_mm table: CLS token, squashed images, K other images."""
    out = str(setup['tmp'] / 'cls.npz')
    run([sys.executable, TOOL] + _args(setup, out) + OLD_OPTIONS)
    table = read_neighbors(out)
    assert not table.includes_self and table.meta['feature'] == 'cls'
    assert table.meta['resize'] == 'squash' and table.k == K
    sims = brute_force_sims(reference_features(setup, 'cls'))
    ref_topk = -np.sort(-sims, axis=1)[:, :K]
    np.testing.assert_allclose(np.take_along_axis(sims, table.neighbors, 1), ref_topk,
                               atol=1e-5)
    np.testing.assert_allclose(table.similarities, ref_topk, atol=1e-5)
    assert not (table.neighbors == np.arange(len(sims))[:, None]).any()
    for dup, src in DUPLICATES.items():  # copies are each other's nearest neighbour
        assert table.neighbors[dup, 0] == src and table.neighbors[src, 0] == dup


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
    for dup, src in DUPLICATES.items():  # column 0 the image itself, then its copy
        assert ta.neighbors[dup, 1] == src and ta.neighbors[src, 1] == dup
    with pytest.raises(KeyError, match='ckpt.pth') as e:
        tool.main(_args(setup, str(setup['tmp'] / 'c.npz')) + ['--checkpoint-prefix', 'teacher.'])
    assert "'teacher.'" in str(e.value)
    with pytest.raises(ValueError, match='need at least 11 for k=11'):
        tool.main(_args(setup, str(setup['tmp'] / 'c.npz')) + ['-k', '11'])
    with pytest.raises(ValueError, match='need at least 11 for k=10'):
        tool.main(_args(setup, str(setup['tmp'] / 'c.npz')) + ['-k', '10', '--no-include-self'])
    for bad in (['-k', '1'], ['--feature', 'gem'], ['--resize', 'crop']):
        with pytest.raises(SystemExit):
            tool.main(_args(setup, str(setup['tmp'] / 'c.npz')) + bad)
    with pytest.raises(SystemExit):
        tool.main(_args(setup, str(setup['tmp'] / 'c.pkl')))
    assert tool.shard_bounds(10, 3, 0) == (0, 4) and tool.shard_bounds(10, 3, 2) == (8, 10)
    assert tool.shard_bounds(2, 3, 2) == (2, 2)


def test_resize_image_stego_matches_torchvision():
    """'stego' = torchvision Resize(S, NEAREST) + CenterCrop(S) (the released files' input)."""
    tool = _load_tool()
    rng = np.random.default_rng(3)
    for h, w in ((36, 44), (45, 31), (32, 32), (50, 33)):
        img = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        ref = T.Compose([T.Resize(32, T.InterpolationMode.NEAREST), T.CenterCrop(32)])(img)
        got = tool.resize_image(img, 32, 'stego')
        assert got.size == (32, 32)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
        squash = tool.resize_image(img, 32, 'squash')
        np.testing.assert_array_equal(np.asarray(squash),
                                      np.asarray(img.resize((32, 32), Image.BILINEAR)))
    with pytest.raises(ValueError, match="'crop'"):
        tool.resize_image(img, 32, 'crop')

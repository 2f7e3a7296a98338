"""Precompute the neighbour table of every training image with a backbone's global feature.

CoTAP (https://arxiv.org/abs/2509.09429) loads with every image a partner drawn uniformly from the
first 7 columns of a precomputed table. The released tables are STEGO's ``precompute_knns`` files,
which this tool reproduces by default:

* ``--feature patch-mean``: the mean of the last layer's patch tokens after the final norm (a
  ViT; the average-pooled last feature map otherwise); ``cls``: the CLS token after the final norm
  (cotap_mm's earlier choice);
* ``--include-self`` (default): column 0 is the image itself, then its ``k - 1`` nearest
  neighbours, so with ``-k 7`` about one pair in seven is the image with itself, as released;
  ``--no-include-self``: ``k`` nearest other images (cotap_mm's earlier choice);
* ``--resize stego``: shorter side to ``--img-size`` (nearest neighbour) and a centre crop of
  ``--img-size`` squared (STEGO's ``get_transform(res, False, 'center')``); ``squash``: resized to
  ``--img-size`` squared, bilinear, no crop (cotap_mm's earlier choice).

Cosine similarity, ImageNet mean / std normalisation. The output file (``.npz`` or ``.json``;
format in ``cotap_mm/datasets/neighbors.py``; ``meta`` records the three choices) holds image paths
relative to ``--data-root``, so a dataset with the same ``data_root`` (``COCOUnlabeled``,
``ImageNetUnlabeled``, ``neighbors_file=...``) finds them.

Examples::

    # COCO train2017 with DINO ViT-B/16 converted for CoTAP (keys backbone.*), one GPU: the file the
    # released configs read (data/<data set>/knn/<data_prefix>_<feature model>_k<K>.npz)
    python tools/misc/compute_neighbors.py \\
        configs/cotap/cotap_vit-base-p16-dino_8xb16-210k_coco-in1k.py \\
        --checkpoint checkpoints/dino_vitb16_cotap.pth \\
        --data-root data/coco --data-prefix train2017 -k 7 \\
        --out data/coco/knn/train2017_dino_vitb16_k7.npz
    # the earlier cotap_mm table: CLS feature, 7 other images, squashed images
    python tools/misc/compute_neighbors.py CONFIG --checkpoint CKPT --data-root data/coco \\
        --data-prefix train2017 --feature cls --no-include-self --resize squash --out OUT.npz
    # ImageNet-1k train on 8 GPUs (same config and checkpoint)
    torchrun --nproc_per_node 8 tools/misc/compute_neighbors.py CONFIG --checkpoint CKPT \\
        --data-root data/imagenet --data-prefix train -k 7 \\
        --out data/imagenet/knn/train_dino_vitb16_k7.npz --launcher pytorch

Distributed (``--launcher pytorch`` under torchrun; gloo on CPU-only machines): every rank embeds a
contiguous shard of the images, the features are all-gathered, every rank searches the neighbours of
its shard among all images, the results are gathered and rank 0 writes the file.
"""
import argparse
import io
import math
import os
import os.path as osp
import sys
from typing import List, Optional, Sequence, Tuple

try:
    import cotap_mm  # noqa: F401  (registers modules, installs the safe checkpoint loader)
except ModuleNotFoundError as err:  # not the project's environment, e.g. the system python
    sys.exit(f'tools/misc/compute_neighbors.py: {err} in {sys.executable}: use the cotap_mm '
             'environment (`source .venv/bin/activate` after `make setup`, or .venv/bin/python)')
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine import dist  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.fileio import get  # noqa: E402
from mmengine.utils import ProgressBar  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from cotap_mm.datasets.coco_unlabeled import UnlabeledImageDataset  # noqa: E402
from cotap_mm.datasets.neighbors import (knn_cosine, knn_cosine_self_first,  # noqa: E402
                                         relative_key, write_neighbors)
from cotap_mm.evaluation.linear_probe import last_layer_output, normalize_images  # noqa: E402
from cotap_mm.utils import safe_torch_load, trust_checkpoint  # noqa: E402
from cotap_mm.utils.launch import init_cpu_process_group, shutdown_process_group  # noqa: E402
from mmpretrain.registry import MODELS  # noqa: E402

FEATURES = ('patch-mean', 'cls')
RESIZE_MODES = ('stego', 'squash')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='neighbour table of every image with a backbone\'s global feature')
    parser.add_argument('config', help='config whose model.backbone (or model) is the backbone')
    parser.add_argument('--checkpoint', default=None,
                        help='checkpoint with the backbone weights (without it: random init '
                        'with --seed, for tests only)')
    parser.add_argument('--checkpoint-prefix', default='backbone.',
                        help="prefix of the backbone keys in the checkpoint (e.g. 'backbone.', "
                        "'teacher.backbone.', '' for a bare backbone state dict)")
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow full unpickling of --checkpoint (only for files you trust)')
    parser.add_argument('--data-root', required=True,
                        help='data root; the file stores image paths relative to it')
    parser.add_argument('--data-prefix', default='', help='image folder under --data-root')
    parser.add_argument('--ann-file', default='',
                        help='optional image list (text, or COCO .json), relative to --data-root')
    parser.add_argument('--out', required=True, help='output neighbour file (.npz or .json)')
    parser.add_argument('-k', '--num-neighbors', type=int, default=7,
                        help='columns per image, the image itself included with --include-self '
                        '(released CoTAP draws from columns 0-6: 7)')
    parser.add_argument('--feature', choices=FEATURES, default='patch-mean',
                        help="global feature: 'patch-mean' = mean of the final-norm patch tokens "
                        "(STEGO / released), 'cls' = final-norm CLS token")
    parser.add_argument('--include-self', action=argparse.BooleanOptionalAction, default=True,
                        help='column 0 is the image itself (STEGO / released; default); '
                        '--no-include-self: k other images')
    parser.add_argument('--resize', choices=RESIZE_MODES, default='stego',
                        help="'stego' = shorter side to --img-size (nearest) + centre crop "
                        "(released); 'squash' = --img-size squared, bilinear, no crop")
    parser.add_argument('--img-size', type=int, default=224, help='model input side (pixels)')
    parser.add_argument('--batch-size', type=int, default=64, help='images per forward')
    parser.add_argument('--num-workers', type=int, default=4, help='dataloader workers per rank')
    parser.add_argument('--device', default=None,
                        help="'cuda' or 'cpu' (default: cuda if available); each rank uses its "
                        'own GPU')
    parser.add_argument('--query-chunk', type=int, default=1024, help='kNN queries per block')
    parser.add_argument('--key-chunk', type=int, default=65536, help='kNN keys per block')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random init')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs')
    parser.add_argument('--launcher', choices=['none', 'pytorch'], default='none',
                        help="'pytorch' under torchrun")
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    min_k = 2 if args.include_self else 1
    if args.num_neighbors < min_k:
        parser.error(f'-k must be >= {min_k}' + (' (column 0 is the image itself)' if
                                                 args.include_self else '') +
                     f', got {args.num_neighbors}')
    if args.img_size < 1 or args.batch_size < 1 or args.num_workers < 0:
        parser.error('--img-size and --batch-size must be >= 1, --num-workers >= 0')
    if osp.splitext(args.out)[1].lower() not in ('.npz', '.json'):
        parser.error(f'--out must end with .npz or .json, got {args.out}')
    return args


def resize_image(img: Image.Image, size: int, mode: str = 'stego') -> Image.Image:
    """``size`` x ``size`` RGB model input of a PIL image.

    Args:
        img (PIL.Image.Image): the image.
        size (int): output side.
        mode (str): 'stego': shorter side to ``size`` with nearest-neighbour sampling (longer
            side ``int(size * long / short)``), then the centre ``size`` x ``size`` crop (offsets
            ``int(round((side - size) / 2))``), as STEGO's ``precompute_knns`` that wrote the
            released files; 'squash': bilinear resize to ``size`` x ``size``, no crop.
    """
    if mode == 'squash':
        return img.resize((size, size), Image.BILINEAR)
    if mode != 'stego':
        raise ValueError(f'resize mode must be one of {RESIZE_MODES}, got {mode!r}')
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    img = img.resize((new_w, new_h), Image.NEAREST)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


class ResizedImages(Dataset):
    """Images as uint8 ``[3, S, S]`` RGB tensors, resized by :func:`resize_image`."""

    def __init__(self, paths: Sequence[str], size: int, mode: str = 'stego') -> None:
        self.paths = list(paths)
        self.size = size
        self.mode = mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        try:
            img = Image.open(io.BytesIO(get(self.paths[i]))).convert('RGB')
        except Exception as e:
            raise RuntimeError(f'could not read image {self.paths[i]}: {e}') from e
        img = resize_image(img, self.size, self.mode)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def build_backbone(cfg: Config, checkpoint: Optional[str], prefix: str,
                   seed: int) -> torch.nn.Module:
    """``cfg.model.backbone`` (or ``cfg.model``) with the checkpoint's ``prefix*`` weights."""
    model_cfg = cfg.get('model')
    if model_cfg is None:
        raise KeyError(f'config {cfg.filename} has no model')
    bb_cfg = model_cfg.get('backbone', model_cfg)
    torch.manual_seed(seed)
    backbone = MODELS.build(bb_cfg)
    backbone.eval()  # (mmpretrain's ViT.train() does not return self)
    if checkpoint is None:  # constructor init, deterministic with the seed: same on every rank
        return backbone
    ckpt = safe_torch_load(checkpoint, map_location='cpu')
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f'checkpoint {checkpoint}: expected a state dict, got '
                         f'{type(ckpt).__name__}')
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise KeyError(f'checkpoint {checkpoint} has no key starting with {prefix!r} (e.g. '
                       f'{list(state)[:5]}); set --checkpoint-prefix')
    missing, unexpected = backbone.load_state_dict(sub, strict=False)
    if missing:
        raise KeyError(f'checkpoint {checkpoint}: backbone weights missing under prefix '
                       f'{prefix!r}: {missing[:10]}{" ..." if len(missing) > 10 else ""}')
    if unexpected and dist.get_rank() == 0:
        print(f'warning: checkpoint {checkpoint} has {len(unexpected)} unused keys under '
              f'{prefix!r}, e.g. {unexpected[:5]}', flush=True)
    return backbone


@torch.no_grad()
def global_features(backbone: torch.nn.Module, x: torch.Tensor,
                    feature: str = 'patch-mean') -> torch.Tensor:
    """Global feature ``[B, C]`` of normalised images ``x`` ``[B, 3, S, S]``.

    'patch-mean': the mean over positions of the last layer's patch-token map (after the final
    norm; STEGO's ``DinoFeaturizer`` output ``.mean([2, 3])``); the average-pooled last output map
    of a non-ViT backbone. 'cls': a ViT's last-layer CLS token after the final norm.
    """
    from mmpretrain.models.backbones import VisionTransformer
    if feature == 'cls':
        if not (isinstance(backbone, VisionTransformer) and backbone.with_cls_token):
            raise ValueError(f"--feature cls needs a ViT with a CLS token, got "
                             f"{type(backbone).__name__}; use --feature patch-mean")
        out = last_layer_output(backbone, x, 'cls_token')
    elif feature == 'patch-mean':
        out = last_layer_output(backbone, x, 'featmap')
    else:
        raise ValueError(f'feature must be one of {FEATURES}, got {feature!r}')
    if out.ndim == 4:
        out = out.mean((2, 3))
    if out.ndim != 2:
        raise ValueError(f'the backbone output must be [B, C] or [B, C, h, w], got '
                         f'{tuple(out.shape)}')
    return out.float()


def embed(backbone: torch.nn.Module, paths: Sequence[str], args: argparse.Namespace,
          device: torch.device, dim: int, show_progress: bool) -> torch.Tensor:
    """Features ``[len(paths), dim]`` (float32, on ``device``) of the images ``paths``."""
    feats = torch.zeros(len(paths), dim, dtype=torch.float32, device=device)
    if not paths:
        return feats
    loader = DataLoader(ResizedImages(paths, args.img_size, args.resize),
                        batch_size=args.batch_size,
                        num_workers=args.num_workers, shuffle=False, drop_last=False)
    bar = ProgressBar(len(paths)) if show_progress else None
    start = 0
    for imgs in loader:
        x = normalize_images(imgs.to(device))  # ImageNet mean / std
        f = global_features(backbone, x, args.feature)
        feats[start:start + len(f)] = f
        start += len(f)
        if bar is not None:
            bar.update(len(f))
    if bar is not None:
        sys.stdout.write('\n')
        sys.stdout.flush()
    return feats


def shard_bounds(n: int, world_size: int, rank: int) -> Tuple[int, int]:
    """Contiguous shard ``[start, end)`` of ``n`` items for ``rank`` (ceil-sized shards)."""
    per = math.ceil(n / world_size)
    return min(rank * per, n), min((rank + 1) * per, n)


def gather_rows(x: torch.Tensor, n: int, world_size: int) -> torch.Tensor:
    """All-gather the ceil-sized row shards of every rank and trim to ``n`` rows."""
    if world_size == 1:
        return x
    per = math.ceil(n / world_size)
    padded = x.new_zeros((per, *x.shape[1:]))
    padded[:len(x)] = x
    return torch.cat(dist.all_gather(padded))[:n]


def init_launcher(launcher: str, device: Optional[str]) -> torch.device:
    """Initialise the process group and pick this rank's device."""
    use_cuda = torch.cuda.is_available() if device is None else device.startswith('cuda')
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError(f'--device {device} but CUDA is not available')
    if launcher == 'pytorch':
        if use_cuda:
            dist.init_dist('pytorch', backend='nccl')
        else:
            init_cpu_process_group(dict(backend='gloo'))
    if not use_cuda:
        return torch.device('cpu')
    if launcher == 'pytorch':  # init_dist set this rank's GPU (LOCAL_RANK)
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device(device or 'cuda')


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    if args.launcher == 'pytorch' and 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    device = init_launcher(args.launcher, args.device)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.checkpoint and args.trust_checkpoint:
        trust_checkpoint(args.checkpoint)

    images = UnlabeledImageDataset(data_root=args.data_root, data_prefix=args.data_prefix,
                                   ann_file=args.ann_file, serialize_data=False)
    paths: List[str] = [info['img_path'] for info in images.data_list]
    keys = [relative_key(p, args.data_root) for p in paths]
    n = len(paths)
    min_n = args.num_neighbors if args.include_self else args.num_neighbors + 1
    if n < min_n:
        raise ValueError(f'{n} images under {images.img_prefix}: need at least {min_n} for '
                         f'k={args.num_neighbors} (include_self={args.include_self})')

    backbone = build_backbone(cfg, args.checkpoint, args.checkpoint_prefix, args.seed)
    backbone.to(device)
    if args.checkpoint is None and rank == 0:
        print('warning: no --checkpoint, the backbone is randomly initialised '
              f'(seed {args.seed}); the neighbours are meaningless except for tests', flush=True)
    dim = global_features(backbone, torch.zeros(1, 3, args.img_size, args.img_size,
                                                device=device), args.feature).shape[1]
    start, end = shard_bounds(n, world_size, rank)
    if rank == 0:
        print(f'embedding {n} images ({args.img_size}px, {dim}-d features) on {world_size} '
              f'rank(s), device {device}', flush=True)
    local = embed(backbone, paths[start:end], args, device, dim, show_progress=rank == 0)
    feats = gather_rows(local, n, world_size)

    search = knn_cosine_self_first if args.include_self else knn_cosine
    idx, sim = search(feats, args.num_neighbors, queries=slice(start, end),
                      query_chunk=args.query_chunk, key_chunk=args.key_chunk)
    idx = gather_rows(idx, n, world_size)
    sim = gather_rows(sim, n, world_size)
    if rank == 0:
        meta = dict(config=args.config, checkpoint=args.checkpoint,
                    checkpoint_prefix=args.checkpoint_prefix, data_root=args.data_root,
                    data_prefix=args.data_prefix, ann_file=args.ann_file,
                    img_size=args.img_size, k=args.num_neighbors, feature=args.feature,
                    includes_self=args.include_self, resize=args.resize, similarity='cosine',
                    num_images=n, world_size=world_size, seed=args.seed)
        write_neighbors(args.out, keys, idx.cpu().numpy(), sim.cpu().numpy(), meta)
        others = sim[:, 1:] if args.include_self else sim
        print(f'wrote {n} x {args.num_neighbors} neighbour columns to {args.out} '
              f'({args.feature} features, ' + ('image itself in column 0, ' if args.include_self
                                               else '') +
              f'mean similarity to the other images {float(others.mean()):.4f})', flush=True)
    if world_size > 1:
        dist.barrier()
    if args.launcher != 'none':  # the group this tool started
        shutdown_process_group()
    return args.out


if __name__ == '__main__':
    main()

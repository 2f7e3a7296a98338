"""Publish a slim, backbone-only checkpoint from a cotap_mm training checkpoint.

Keeps the backbone tensors of ``state_dict`` (by default the EMA teacher's ``teacher.backbone.*`` when
the checkpoint has one, else ``backbone.*``), renames them to ``backbone.*``, drops the optimizer,
message hub, heads, necks, the other branch and buffers, optionally casts to fp16, and writes
``<out_stem>-<first 8 hex digits of sha256>.pth`` (like mmpretrain / mmdet ``publish_model.py``)::

    {'state_dict': {'backbone.<mmpretrain ViT key>': tensor, ...}, 'meta': {... plain data ...}}

It loads with ``torch.load(..., weights_only=True)`` and in mmseg / mmdet / mmpretrain configs with
``init_cfg=dict(type='Pretrained', checkpoint=OUT, prefix='backbone.')``.

``--with-neck`` also keeps the same branch's object-aware filter (``teacher.neck.*`` for
``teacher.backbone.*``, ``neck.*`` for ``backbone.*``) renamed to ``neck.*``: the checkpoint the
paper-protocol probes load (``type='mmpretrain.CoTAPFilteredViT'`` with
``init_cfg=dict(type='Pretrained', checkpoint=OUT, prefix='')``).

Usage::

    python tools/model_converters/publish_model.py work_dirs/cotap/epoch_10.pth cotap_vits16.pth
    python tools/model_converters/publish_model.py epoch_10.pth cotap_vits16_student.pth \
        --keep-prefix backbone. --half
    python tools/model_converters/publish_model.py epoch_10.pth cotap_vits16_filtered.pth --with-neck

Why the teacher by default: DINO, iBOT and DINOv2 release (and evaluate) their EMA teacher; the CoTAP
paper does not say which branch it evaluates, so we follow its initialisations. Pass
``--keep-prefix backbone.`` for the student.

Inputs are read with :func:`cotap_mm.utils.checkpoint.safe_torch_load` (``weights_only=True``);
checkpoints written by ``PlainCheckpointHook`` load as they are. A checkpoint holding pickled objects
(e.g. written by plain mmengine) needs ``--trust-checkpoint`` (full unpickling can run arbitrary code).
"""
import argparse
import hashlib
import os
import os.path as osp
import sys
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional

try:
    import cotap_mm  # noqa: F401  (registers modules, installs the safe checkpoint loader)
except ModuleNotFoundError as err:  # not the project's environment, e.g. the system python
    sys.exit(f'tools/model_converters/publish_model.py: {err} in {sys.executable}: use the cotap_mm '
             'environment (`source .venv/bin/activate` after `make setup`, or .venv/bin/python)')
import torch  # noqa: E402

from cotap_mm.models.backbones.vit_key_mapping import (default_backbone_prefix,  # noqa: E402
                                                       extract_prefixed, infer_vit_arch)
from cotap_mm.utils.checkpoint import (UnsafeCheckpointError, load_checkpoint_file,  # noqa: E402
                                       to_plain)

# mmengine ``meta`` entries worth keeping (small, plain); ``cfg`` (the whole config text) included.
META_KEYS = ('epoch', 'iter', 'seed', 'experiment_name', 'mmengine_version', 'time', 'cfg')


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(path: str, trust: bool = False) -> Any:
    """Load with ``weights_only=True`` unless ``trust`` (see module docstring)."""
    return load_checkpoint_file(path, trust=trust)


def neck_prefix_for(backbone_prefix: str) -> str:
    """The filter prefix of the branch of ``backbone_prefix``: ``'teacher.backbone.'`` ->
    ``'teacher.neck.'``, ``'backbone.'`` -> ``'neck.'``.

    Raises:
        ValueError: ``backbone_prefix`` does not end with ``'backbone.'``.
    """
    if not backbone_prefix.endswith('backbone.'):
        raise ValueError(f"--with-neck needs a keep prefix ending in 'backbone.' (the neck of the same "
                         f"branch is '<branch>neck.'), got {backbone_prefix!r}")
    return backbone_prefix[:-len('backbone.')] + 'neck.'


def slim_checkpoint(ckpt: Any, keep_prefix: Optional[str] = None, out_prefix: str = 'backbone.',
                    half: bool = False, with_neck: bool = False) -> Dict[str, Any]:
    """Loaded training checkpoint -> ``{'state_dict': backbone tensors, 'meta': plain dict}``.

    Args:
        ckpt: a checkpoint dict with ``state_dict`` (mmengine), or a bare state dict.
        keep_prefix (str, optional): prefix of the tensors to keep. None = the EMA teacher's backbone
            (``teacher.backbone.``) if present, else ``backbone.``.
        out_prefix (str): prefix of the kept tensors in the output. Defaults to 'backbone.'.
        half (bool): cast floating-point tensors to fp16. Defaults to False.
        with_neck (bool): also keep the branch's object-aware filter (:func:`neck_prefix_for`),
            renamed to ``neck.*``. Defaults to False.

    Raises:
        ValueError: not a checkpoint, or no tensor with the prefix (the prefixes seen are listed),
            or ``with_neck`` and no filter tensors for the branch.
    """
    if not isinstance(ckpt, Mapping):
        raise ValueError(f'expected a checkpoint dict, got {type(ckpt).__name__}')
    if 'state_dict' in ckpt:
        state_dict = ckpt['state_dict']
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"checkpoint['state_dict'] is a {type(state_dict).__name__}, not a dict")
    elif ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state_dict = ckpt
    else:
        raise ValueError("checkpoint has no 'state_dict' and is not a bare state dict; top-level keys: "
                         f'{sorted(map(str, ckpt))[:20]}')
    chosen = keep_prefix if keep_prefix else default_backbone_prefix(state_dict)
    if chosen.startswith('teacher.') and 'teacher_initialized' in state_dict \
            and not bool(state_dict['teacher_initialized']):
        print('WARNING: teacher_initialized is False in this checkpoint: the teacher was never '
              'initialised by EMATeacherHook.', file=sys.stderr)
    tensors = extract_prefixed(state_dict, chosen, out_prefix)
    num_backbone = len(tensors)
    neck_prefix = None
    if with_neck:
        neck_prefix = neck_prefix_for(chosen)
        neck = extract_prefixed(state_dict, neck_prefix, 'neck.')
        clash = sorted(set(neck) & set(tensors))
        if clash:
            raise ValueError(f'--with-neck: the output prefix {out_prefix!r} collides with neck.* '
                             f'({clash[:5]})')
        tensors.update(neck)
    if half:
        tensors = OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in tensors.items())
    tensors = OrderedDict((k, v.detach().clone().contiguous()) for k, v in tensors.items())
    meta_in = ckpt.get('meta') if isinstance(ckpt.get('meta'), Mapping) else {}
    meta = {k: to_plain(meta_in[k]) for k in META_KEYS if k in meta_in}
    meta['publish'] = dict(
        converter='tools/model_converters/publish_model.py',
        source_prefix=chosen,
        key_prefix=out_prefix,
        dtype='float16' if half else 'as saved',
        num_tensors=len(tensors),
    )
    if with_neck:
        meta['publish'].update(neck_source_prefix=neck_prefix, neck_key_prefix='neck.',
                               num_neck_tensors=len(tensors) - num_backbone)
    if out_prefix + 'patch_embed.projection.weight' in tensors and out_prefix + 'pos_embed' in tensors:
        plain = {k[len(out_prefix):]: v for k, v in list(tensors.items())[:num_backbone]}
        meta['arch'] = infer_vit_arch(plain)
    return dict(state_dict=tensors, meta=meta)


def final_path(out_file: str, sha256: str) -> str:
    """``<stem>-<sha256[:8]>.pth`` next to ``out_file`` (a trailing ``.pth`` is replaced)."""
    stem = out_file[:-len('.pth')] if out_file.endswith('.pth') else out_file
    return f'{stem}-{sha256[:8]}.pth'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('in_file', help='training checkpoint (e.g. work_dirs/<cfg>/epoch_10.pth)')
    parser.add_argument('out_file', help='output name; the sha256 prefix is appended: OUT-xxxxxxxx.pth')
    parser.add_argument('--keep-prefix', default=None,
                        help="state_dict prefix to publish (default: 'teacher.backbone.' if present, "
                        "else 'backbone.'; 'backbone.' = the student)")
    parser.add_argument('--out-prefix', default='backbone.',
                        help="prefix of the published keys (default 'backbone.')")
    parser.add_argument('--half', action='store_true', help='cast floating-point tensors to fp16')
    parser.add_argument('--with-neck', action='store_true',
                        help="also keep the same branch's object-aware filter ('teacher.neck.' / "
                        "'neck.') as neck.* (for the CoTAPFilteredViT probes)")
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='load IN_FILE with full unpickling (only for files you trust)')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    ckpt = load_checkpoint(args.in_file, trust=args.trust_checkpoint)
    out = slim_checkpoint(ckpt, keep_prefix=args.keep_prefix, out_prefix=args.out_prefix, half=args.half,
                          with_neck=args.with_neck)
    out['meta']['publish']['source'] = osp.basename(args.in_file)
    out_dir = osp.dirname(osp.abspath(args.out_file))
    os.makedirs(out_dir, exist_ok=True)
    tmp = osp.join(out_dir, f'.{osp.basename(args.out_file)}.tmp{os.getpid()}')
    torch.save(out, tmp)
    final = final_path(args.out_file, sha256_file(tmp))
    os.replace(tmp, final)
    print(f"Published {len(out['state_dict'])} tensors from '{out['meta']['publish']['source_prefix']}' "
          f'of {args.in_file}', file=sys.stderr)
    print(final)
    return final


if __name__ == '__main__':
    try:
        main()
    except (FileNotFoundError, ValueError, UnsafeCheckpointError) as e:
        sys.exit(f'error: {e}')

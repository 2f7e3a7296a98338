"""Convert a DINO / iBOT / DINOv2 / timm ViT or a released CoTAP checkpoint into one our configs load.

Output (ViT formats; released CoTAP checkpoints: see below):
``{'state_dict': {'backbone.<mmpretrain ViT key>': tensor, ...}, 'meta': {...plain data}}``, loadable with ``torch.load(..., weights_only=True)``, e.g. by
``model.backbone.init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone.')`` or an
algorithm's ``init_cfg`` / ``load_from``.

Usage::

    python tools/model_converters/vit2cotap.py dino_deitsmall16_pretrain.pth dino_vits16_cotap.pth
    python tools/model_converters/vit2cotap.py ibot_checkpoint_teacher.pth out.pth --src-format ibot
    python tools/model_converters/vit2cotap.py dinov2_vits14_pretrain.pth dinov2_vits14_cotap.pth

DINOv2 ViT-S/B/L/14 (LayerScale) and ViT-g/14 (SwiGLU) are supported; the ``_reg4`` variants (register
tokens) are refused: our ViT has no register tokens. The printed / ``meta['cotap_vit_kwargs']``
constructor arguments rebuild the matching :class:`CoTAPViT` (e.g. ``patch_size=14, img_size=518,
layer_scale_init_value=1e-5`` for DINOv2; the number of heads assumes head dim 64).

Sources are read with ``weights_only=True``; ``argparse.Namespace`` (stored as ``'args'`` in DINO/iBOT
full checkpoints) is allowed. A file needing more has to be trusted explicitly with
``--trust-checkpoint`` (full unpickling can run arbitrary code).

**Released CoTAP checkpoints** (``--src-format cotap-release``; the ``.ckpt`` files of the official
code, github.com/KID-7391/CoTAP; key layout in
:mod:`cotap_mm.models.backbones.cotap_release_mapping`): the ViT, the object-aware filter
(``kernel``, ``norm_in``, ``norm_out_patch``, ``norm_out_cls``) and the two projection heads, of the
student (``net.model.*``) and the EMA teacher (``net_teacher.model.*``)::

    # a full CoTAP algorithm checkpoint (student + teacher + heads), for load_from
    python tools/model_converters/vit2cotap.py dino+cotap.ckpt cotap_vits16_release.pth \
        --src-format cotap-release --target algorithm
    # ViT + filter of one branch for CoTAPFilteredViT (mmseg probes; init_cfg prefix '')
    python tools/model_converters/vit2cotap.py dino+cotap.ckpt cotap_vits16_release_filtered.pth \
        --src-format cotap-release --target filtered [--branch teacher]

* ``--target algorithm`` (default): ``backbone.*``, ``neck.*``, ``patch_head.*``, ``cls_head.*`` from
  the student, ``teacher.<same>.*`` from the teacher (``--branch student|teacher`` puts that one
  branch in both; a state dict of a single ViT goes to both), ``teacher_initialized = True`` (so
  ``EMATeacherHook`` keeps the imported teacher) and ``neck.prototypes_initialized = True`` (so
  CoTAP does not re-run k-means). Load it with ``load_from`` into ``CoTAP`` built with the printed
  kwargs. Not in the release and left to the model's initial values: the prototype bank
  (``proto_bank.*``: empty), the Sinkhorn queues
  (``patch_queue.*``, ``cls_queue.*``: empty), the step counter ``loss_iter`` (0: the clustering
  terms start after ``cluster_start_iter`` steps as in a fresh run) and loss buffers such as
  ``cls_loss.center`` (the release saves no bank or queue either: plain attributes).
* ``--target filtered``: ``backbone.*`` + ``neck.*`` of one branch (default ``--branch student``:
  the release evaluates ``net``, the student, in ``train.py``'s test path), loadable by
  ``CoTAPFilteredViT(init_cfg=dict(type='Pretrained', checkpoint=DST, prefix=''))``.

The release's ViT has no final norm: the printed kwargs carry ``final_norm=False``, or
``--add-final-norm`` writes a freshly initialised ``backbone.ln1`` (weight 1, bias 0, listed in
``meta['initialised_keys']``) for configs with the default ``final_norm=True`` (neither CoTAP's
filter path nor ``CoTAPFilteredViT`` reads it). ``meta`` records the branches used, the dropped keys
(the filter LayerNorms every released block builds but only the last uses, ``loss_fn.*`` /
``tester.*``, the heads for the filtered target), the branch not used (``unused_branches``) and the
constructor kwargs. The release feeds raw
[0, 1] images and normalises them inside the model with ImageNet mean / std, our data preprocessors
do the same outside (``mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]`` on 0-255).

The released ``.ckpt`` files are PyTorch-Lightning checkpoints whose ``hyper_parameters`` pickle the
training config (Lightning / OmegaConf classes). For this format, unless ``--trust-checkpoint``, the
file is read with ``weights_only=True`` and every class torch does not allow there is replaced by an
inert ``OrderedDict`` placeholder (its code is never imported or run; torch still refuses ``os`` /
``sys`` globals); the replaced names are printed and recorded in ``meta['placeholder_globals']``.
Only the tensors of ``state_dict`` are used.
"""
import argparse
import os
import os.path as osp
import sys
from typing import Any, Dict, List, Optional

try:
    import cotap_mm  # noqa: F401  (registers modules, installs the safe checkpoint loader)
except ModuleNotFoundError as err:  # not the project's environment, e.g. the system python
    sys.exit(f'tools/model_converters/vit2cotap.py: {err} in {sys.executable}: use the cotap_mm '
             'environment (`source .venv/bin/activate` after `make setup`, or .venv/bin/python)')
import torch  # noqa: E402

from cotap_mm.converters.vit_checkpoints import (SRC_FORMATS, TARGETS,  # noqa: E402,F401
                                                 convert_checkpoint, convert_release_checkpoint,
                                                 load_source, load_with_placeholders)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='DINO / iBOT / DINOv2 / timm / released CoTAP checkpoint file')
    parser.add_argument('dst', help='output checkpoint file')
    parser.add_argument('--src-format', choices=SRC_FORMATS, default='auto')
    parser.add_argument('--target', choices=TARGETS, default=None,
                        help='cotap-release only: algorithm (CoTAP, default) or filtered '
                        '(CoTAPFilteredViT)')
    parser.add_argument('--branch', choices=('teacher', 'student'), default=None,
                        help='branch of a teacher/student checkpoint (default: teacher; '
                        'cotap-release: student for --target filtered, both for algorithm)')
    parser.add_argument('--prefix', default=None,
                        help="key prefix (default 'backbone.'; not for cotap-release)")
    parser.add_argument('--add-final-norm', action='store_true',
                        help='cotap-release: write a fresh backbone.ln1 for final_norm=True configs')
    parser.add_argument('--num-heads', type=int, default=None,
                        help='heads recorded in meta cotap_vit_kwargs (default: embed_dims // 64)')
    parser.add_argument('--non-strict', action='store_true',
                        help='drop unknown keys instead of failing')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='load SRC with full unpickling (only for files you trust)')
    return parser.parse_args(argv)


def _main_release(args: argparse.Namespace) -> Dict[str, Any]:
    """``--src-format cotap-release``: load, convert, save, print the kwargs."""
    if args.prefix is not None:
        raise ValueError('--prefix does not apply to --src-format cotap-release (the targets fix '
                         'the keys: backbone./neck./heads./teacher.)')
    placeholders: List[str] = []
    if args.trust_checkpoint:
        ckpt = load_source(args.src, trust=True)
    else:
        if not osp.isfile(args.src):
            raise FileNotFoundError(f'source checkpoint {args.src} does not exist')
        ckpt, placeholders = load_with_placeholders(args.src)
    out = convert_release_checkpoint(ckpt, target=args.target or 'algorithm', branch=args.branch,
                                     strict=not args.non_strict, num_heads=args.num_heads,
                                     add_final_norm=args.add_final_norm,
                                     source=osp.basename(args.src))
    meta = out['meta']
    meta['src'] = osp.basename(args.src)
    meta['placeholder_globals'] = placeholders
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    torch.save(out, args.dst)
    if placeholders:
        print(f'Read {args.src} with weights_only=True; inert placeholders for: {placeholders}')
    print(f"Saved {len(out['state_dict'])} tensors to {args.dst} (target {meta['target']}, "
          f"{meta['layout']} layout, {meta['branches']}); dropped {len(meta['dropped_keys'])} "
          'keys (meta dropped_keys)' + (f"; not used: {meta['unused_branches']}"
                                        if meta['unused_branches'] else '') + '.')
    if meta['target'] == 'algorithm':
        print(f"CoTAP model kwargs: {meta['cotap_model_kwargs']}")
    print(f"CoTAPFilteredViT kwargs: {meta['filtered_vit_kwargs']}")
    if not meta['cotap_vit_kwargs']['final_norm']:
        print('The released ViT has no final norm: build it with final_norm=False, or convert '
              'with --add-final-norm for configs keeping final_norm=True.')
    return out


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.src_format == 'cotap-release':
        return _main_release(args)
    for flag, val in (('--target', args.target), ('--add-final-norm', args.add_final_norm or None)):
        if val is not None:
            raise ValueError(f'{flag} only applies to --src-format cotap-release')
    ckpt = load_source(args.src, trust=args.trust_checkpoint)
    out = convert_checkpoint(ckpt, src_format=args.src_format, branch=args.branch,
                             prefix=args.prefix, strict=not args.non_strict, num_heads=args.num_heads)
    out['meta']['src'] = osp.basename(args.src)
    dst_dir = osp.dirname(osp.abspath(args.dst))
    os.makedirs(dst_dir, exist_ok=True)
    torch.save(out, args.dst)
    arch = out['meta']['arch']
    print(f'Saved {len(out["state_dict"])} tensors to {args.dst} (embed_dims={arch["embed_dims"]}, '
          f'num_layers={arch["num_layers"]}, patch_size={arch["patch_size"]}); dropped '
          f'{len(out["meta"]["dropped_keys"])} head keys.')
    if 'cotap_vit_kwargs' in out['meta']:
        print(f"CoTAPViT kwargs: {out['meta']['cotap_vit_kwargs']}")
    return out


if __name__ == '__main__':
    try:
        main()
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        sys.exit(f'error: {e}')

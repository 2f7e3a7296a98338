"""A tiny real CoTAP model (from the demo config) with random weights, saved as a training checkpoint,
for the tests of :class:`cotap_mm.models.backbones.CoTAPFilteredViT` and its mmseg probes."""
import os
import os.path as osp
from typing import Dict, Optional

import torch
from mmengine.config import Config

from .tiny_runs import REPO_ROOT

__all__ = ['DEMO_CONFIG', 'build_tiny_cotap', 'save_cotap_checkpoint']

DEMO_CONFIG = osp.join(REPO_ROOT, 'configs', 'cotap', 'cotap_vit-tiny-p8_1xb8-demo_synthetic.py')


def build_tiny_cotap(arch: Dict[str, int], img_size: int = 32, patch_size: int = 8,
                     num_prototypes: int = 4, seed: int = 0, prototypes_initialized: bool = True,
                     teacher_offset: Optional[float] = 0.1) -> torch.nn.Module:
    """The demo CoTAP config shrunk (``arch``, small heads / queues / bank), every parameter random.

    Student and teacher get *different* random weights (``teacher_offset`` scales the teacher's
    perturbation; None: teacher = student), as after EMA updates; ``prototypes_initialized`` sets
    the flag of both necks (as after CoTAP's k-means).
    """
    import cotap_mm  # noqa: F401  (registers the modules)
    from mmpretrain.registry import MODELS
    m = Config.fromfile(DEMO_CONFIG).model
    m.backbone.arch = dict(arch)
    m.backbone.img_size = img_size
    m.backbone.patch_size = patch_size
    m.neck.num_prototypes = num_prototypes
    for head in (m.patch_head, m.cls_head):
        head.update(hidden_channels=16, bottleneck_channels=8, num_prototypes=8)
    m.patch_queue = dict(size=16, max_per_step=4)
    m.cls_queue = dict(size=16, max_per_step=4)
    m.bank_size = max(8, num_prototypes)
    m.bank_samples_per_step = 2
    model = MODELS.build(m)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith('teacher.'):
                continue
            base = 1.0 if name.endswith(('ln1.weight', 'ln2.weight', 'norm_in.weight',
                                         'norm_out_patch.weight', 'norm_out_cls.weight')) else 0.0
            p.copy_(base + 0.3 * torch.randn(p.shape, generator=g))
        for k in ('backbone', 'neck', 'patch_head', 'cls_head'):
            model.teacher[k].load_state_dict(getattr(model, k).state_dict())
        if teacher_offset is not None:
            for p in model.teacher.parameters():
                p.add_(teacher_offset * torch.randn(p.shape, generator=g))
        if prototypes_initialized:
            model.neck.mark_initialized()
            model.teacher['neck'].mark_initialized()
        model.teacher_initialized.fill_(True)
    model.eval()
    return model


def save_cotap_checkpoint(model: torch.nn.Module, path: str) -> str:
    """Write ``{'state_dict': model.state_dict(), 'meta': ...}`` (what PlainCheckpointHook writes,
    minus optimizer / message hub) to ``path``."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    torch.save({'state_dict': model.state_dict(), 'meta': {'iter': 10, 'note': 'tiny CoTAP'}}, path)
    return path

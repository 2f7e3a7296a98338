"""Reference starts with labels on the generated scenes: the demo's tiny ViT trained with dense
or image-level supervision (``tools/analysis_tools/probe_references.py``,
``tools/analysis_tools/cotap_from_starts.py``)."""
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log

from cotap_mm.evaluation.dense_eval import synthetic_probe_data
from cotap_mm.evaluation.linear_probe import last_layer_output, normalize_images

__all__ = ['tiny_vit', 'presence_labels', 'train_supervised']


def tiny_vit(image_size: int) -> nn.Module:
    """The demo's tiny ViT (embed 96, 4 layers, 3 heads, patch 8), ``out_type='featmap'``."""
    import cotap_mm  # noqa: F401  (registers CoTAPViT)
    from mmpretrain.registry import MODELS
    return MODELS.build(dict(type='CoTAPViT', arch=dict(embed_dims=96, num_layers=4, num_heads=3,
                                                        feedforward_channels=384),
                             img_size=image_size, patch_size=8, out_type='featmap'))


def presence_labels(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[N, num_classes - 1]`` float: 1 where object class ``c`` (1-based) is in the mask."""
    return torch.stack([torch.bincount(m.flatten(), minlength=num_classes)[1:num_classes] > 0
                        for m in masks]).float()


def train_supervised(vit: nn.Module, num_classes: int, iters: int, image_size: int,
                     num_images: int, seed: int, image_level: bool = False) -> None:
    """Train ``vit`` with labels on generated scenes (``seed + 7``, not the probe's images).

    ``image_level=False``: dense cross-entropy (1x1 conv head on the patch tokens, logits upsampled
    to the mask). ``image_level=True``: multi-label binary cross-entropy of a linear head on the CLS
    token against :func:`presence_labels` (no location information). AdamW 5e-4, batch 16.
    """
    imgs, masks, _ = synthetic_probe_data('train', num_images, seed + 7, image_size, num_classes - 1)
    imgs = torch.from_numpy(imgs).permute(0, 3, 1, 2)
    masks = torch.from_numpy(masks).long()
    if image_level:
        targets = presence_labels(masks, num_classes)
        head: nn.Module = nn.Linear(96, num_classes - 1)
    else:
        head = nn.Conv2d(96, num_classes, 1)
    opt = torch.optim.AdamW(list(vit.parameters()) + list(head.parameters()), lr=5e-4,
                            weight_decay=0.05)
    g = torch.Generator().manual_seed(seed)
    vit.train()
    t0 = time.time()
    what = 'image-level supervised' if image_level else 'supervised'
    for it in range(iters):
        idx = torch.randint(0, len(imgs), (16, ), generator=g)
        if image_level:
            cls = last_layer_output(vit, normalize_images(imgs[idx]), 'cls_token')
            loss = F.binary_cross_entropy_with_logits(head(cls), targets[idx])
        else:
            logits = F.interpolate(head(vit(normalize_images(imgs[idx]))[0]),
                                   size=masks.shape[-2:], mode='bilinear', align_corners=False)
            loss = F.cross_entropy(logits, masks[idx], ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 100 == 0 or it == iters - 1:
            print_log(f'{what} [{it + 1}/{iters}] loss {loss.item():.4f} '
                      f'({time.time() - t0:.0f} s)', logger='current')
    vit.eval()

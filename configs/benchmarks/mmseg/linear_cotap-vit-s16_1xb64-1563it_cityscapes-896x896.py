# Cityscapes (19 classes) frozen linear probe of CoTAP ViT-S/16, the released protocol: flip +
# RandomResizedCrop (scale 0.36-1, as released for Cityscapes) to 896x896 for training; evaluation on
# images squashed to 1024x1024 with logits resized to the full-resolution labels (released: target_res
# -1, i.e. no label resize), every 10 passes over the 2,975 training images (460 iterations), best
# mIoU kept; batch 64, lr 1e-3, 100k samples (1,563 iterations).
_base_ = ['mmseg::_base_/datasets/cityscapes.py', './_base_/linear-probe_cotap-vit-s16.py']

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='mmpretrain.SegRandomResizedCrop', size=896, scale=(0.36, 1.0)),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(1024, 1024), keep_ratio=False, backend='pillow'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(batch_size=64, num_workers=8, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
model = dict(
    data_preprocessor=dict(size=(896, 896)),
    decode_head=dict(num_classes=19))
optim_wrapper = dict(optimizer=dict(lr=1e-3))
train_cfg = dict(max_iters=1563, val_interval=460)  # released: every 10 passes
default_hooks = dict(checkpoint=dict(interval=1563))

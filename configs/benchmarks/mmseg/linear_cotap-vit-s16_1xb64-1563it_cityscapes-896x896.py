# Cityscapes (19 classes) frozen linear probe of CoTAP ViT-S/16 (METHOD_cotap §7.1): train crops
# 896x896, evaluation on images squashed to 1024x1024 with logits resized to the full-resolution
# labels (as CoTAP); batch 64, lr 1e-3, 100k samples (1,563 iterations).
_base_ = ['mmseg::_base_/datasets/cityscapes.py', './_base_/linear-probe_cotap-vit-s16.py']

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    # random crop of 64-100 % of the (squashed) image area resized to 896 x 896
    dict(type='RandomResize', scale=(896, 896), ratio_range=(1.0, 1.25), keep_ratio=False),
    dict(type='RandomCrop', crop_size=(896, 896)),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(1024, 1024), keep_ratio=False),
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
train_cfg = dict(max_iters=1563, val_interval=1563)
default_hooks = dict(checkpoint=dict(interval=1563))

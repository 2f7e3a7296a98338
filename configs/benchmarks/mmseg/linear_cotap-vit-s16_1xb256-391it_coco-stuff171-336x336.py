# COCO-Stuff-164k (171 classes, mmseg's *_labelTrainIds.png) frozen linear probe of CoTAP ViT-S/16,
# all train2017 / val2017 images; settings of the COCO-Stuff-27 probe (batch 256, lr 3e-3, 100k
# samples; that config inherits this one) -- CoTAP's code has no 171-class protocol, so these are
# [inferred].
_base_ = ['mmseg::_base_/datasets/coco-stuff164k.py', './_base_/linear-probe_cotap-vit-s16.py']

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    # random crop of 64-100 % of the image area resized to 336 x 336 (see the ADE20K probe)
    dict(type='RandomResize', scale=(336, 336), ratio_range=(1.0, 1.25), keep_ratio=False),
    dict(type='RandomCrop', crop_size=(336, 336)),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(448, 448), keep_ratio=False),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(batch_size=256, num_workers=8, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
model = dict(decode_head=dict(num_classes=171))
train_cfg = dict(max_iters=391, val_interval=391)
default_hooks = dict(checkpoint=dict(interval=391))

# ImageNet-1k linear classification on a frozen backbone (mmpretrain's benchmark layout), with the
# released CoTAP protocol: one pass over the 1.28M training images (5,005 iterations at batch 256),
# Adam lr 1e-3 (constant: no schedule is known for the release), no weight decay; train
# RandomResizedCrop 224 + flip, eval resize 256 (short side) + center crop 224; top-1 / top-5.
# Data: data/imagenet/{train,val}/<wnid>/*.JPEG, or mmpretrain's layout with meta/{train,val}.txt.
# (mmpretrain's own _base_ is not inherited: `mmpretrain::` puts a _scope_ key into default_collate.)
_base_ = ['../../../_base_/default_runtime.py']

data_root = 'data/imagenet'
data_preprocessor = dict(
    num_classes=1000,
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short', backend='pillow'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=256,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='ImageNet', data_root=data_root, split='train', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=256,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='ImageNet', data_root=data_root, split='val', pipeline=test_pipeline))
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

max_iters = 5005  # one pass over 1,281,167 images at batch 256
optim_wrapper = dict(
    type='OptimWrapper', optimizer=dict(type='Adam', lr=1e-3, betas=(0.9, 0.999),
                                        weight_decay=0.0))
param_scheduler = []
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(checkpoint=dict(interval=max_iters, max_keep_ckpts=1),
                     logger=dict(interval=100))
# only the head trains: the frozen backbone's parameters get no gradient
find_unused_parameters = True

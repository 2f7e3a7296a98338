# MoCo v3 (https://arxiv.org/abs/2104.02057) on a tiny ViT, CPU-sized: an image-level SSL baseline.
# Data: any folder of images (UnlabeledImageDataset: mmpretrain's CustomDataset, unlabelled, an
# unreadable file is an error naming it; skip_bad_images=True skips such files).
_base_ = ['../_base_/default_runtime.py']

data_root = 'data/demo_images'
img_size = 64
view_pipeline = [
    dict(type='RandomResizedCrop', scale=img_size, crop_ratio_range=(0.2, 1.), backend='pillow'),
    dict(type='RandomApply',
         transforms=[dict(type='ColorJitter', brightness=0.4, contrast=0.4, saturation=0.2, hue=0.)],
         prob=0.8),
    dict(type='RandomGrayscale', prob=0.2, keep_channels=True,
         channel_weights=(0.114, 0.587, 0.2989)),
    dict(type='RandomFlip', prob=0.5),
]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiView', num_views=2, transforms=[view_pipeline]),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='UnlabeledImageDataset', data_root=data_root, pipeline=train_pipeline))

data_preprocessor = dict(
    type='SelfSupDataPreprocessor',
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)

embed_dims = 96
temperature = 0.2
model = dict(
    type='MoCoV3',
    base_momentum=0.01,
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='MoCoV3ViT',
        arch=dict(embed_dims=embed_dims, num_layers=4, num_heads=3, feedforward_channels=4 * embed_dims),
        img_size=img_size,
        patch_size=8,
        stop_grad_conv1=True),
    neck=dict(type='NonLinearNeck', in_channels=embed_dims, hid_channels=256, out_channels=64,
              num_layers=3, with_bias=False, with_last_bn=True, with_last_bn_affine=False,
              with_last_bias=False, with_avg_pool=False,
              norm_cfg=dict(type='BN1d')),  # SyncBN (mmpretrain's default) has no CPU path
    head=dict(
        type='MoCoV3Head',
        predictor=dict(type='NonLinearNeck', in_channels=64, hid_channels=256, out_channels=64,
                       num_layers=2, with_bias=False, with_last_bn=True, with_last_bn_affine=False,
                       with_last_bias=False, with_avg_pool=False,
                       norm_cfg=dict(type='BN1d')),
        loss=dict(type='CrossEntropyLoss', loss_weight=2 * temperature),
        temperature=temperature))

optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05))
find_unused_parameters = True
max_iters = 200
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', T_max=max_iters - 20, by_epoch=False, begin=20, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=100))
# one image for FeatureExtractor / visualize_features.py: the 64 px of the global crops
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64)),
    dict(type='PackInputs'),
]

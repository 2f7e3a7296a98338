# CPU-sized iBOT + de-coupling on generated scenes (SyntheticScenes, no download): tiny ViT (embed
# 96, 4 layers, 3 heads, patch 8), two global 64 px crops (8 x 8 grid, RCC masks), shared head with
# 256 outputs, de-coupling on 25 % extra samples per view (weight 0.3), 300 iterations.
_base_ = [
    '../_base_/models/ddssl_ibot_vit.py',
    '../_base_/datasets/synthetic_scenes.py',
    '../_base_/default_runtime.py',
]

embed_dims = 96
img_size = 64
model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=embed_dims, num_layers=4, num_heads=3,
                  feedforward_channels=4 * embed_dims),
        img_size=img_size,
        patch_size=8,
        drop_path_rate=0.1),
    cls_head=dict(hidden_channels=256, bottleneck_channels=64, num_prototypes=256),
    cls_loss=dict(warmup_iters=30),
    patch_loss=dict(warmup_iters=30),
)

view_common = [
    dict(type='RandomResizedCrop', scale=img_size, crop_ratio_range=(0.14, 1.), backend='pillow'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='HueSafeColorJitter', brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, prob=0.8),
    dict(type='RandomGrayscale', prob=0.2, keep_channels=True, channel_weights=(0.114, 0.587, 0.299)),
]
view_1 = view_common + [dict(type='RandomGaussianBlur', sigma=(0.1, 1.0), kernel_size=5, prob=1.0)]
view_2 = view_common + [
    dict(type='RandomGaussianBlur', sigma=(0.1, 1.0), kernel_size=5, prob=0.1),
    dict(type='Solarize', thr=128, prob=0.2),
]
train_pipeline = [
    dict(type='MultiView', num_views=[1, 1], transforms=[view_1, view_2]),
    dict(type='RegionCollaborativeCutout', grid_size=img_size // 8, num_masks=2,
         pred_ratio=(0.0, 0.4), pred_ratio_var=(0.0, 0.2)),
    dict(type='PackInputs', algorithm_keys=['rcc_mask']),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

max_iters = 300
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-4, betas=(0.9, 0.999), weight_decay=0.04),
    clip_grad=dict(max_norm=3.0),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', T_max=max_iters - 20, eta_min=1e-6, by_epoch=False, begin=20,
         end=max_iters),
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min_ratio=10.0,
         T_max=max_iters, by_epoch=False, begin=0, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=100))
# one image for FeatureExtractor / visualize_features.py: the 64 px of the global crops
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64)),
    dict(type='PackInputs'),
]

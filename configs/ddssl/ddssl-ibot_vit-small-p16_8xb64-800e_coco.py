# iBOT + de-coupling (RCC masks + de-coupling branch), ViT-S/16, COCO train2017, 800 epochs, 8 GPUs
# x 64: the recipe of "Mind Your Augmentation" (ICLR 2024; successor of
# https://arxiv.org/abs/2303.16947), official configs/Pretrain.sh: base lr 1e-3 per 256 images (->
# 2e-3 at 512), AdamW, wd cosine 0.04 -> 0.4, 10 warm-up epochs, min lr 1e-6, drop-path 0.1,
# clip-grad 3.0, out_dim 8192 shared head, teacher temp 0.04 -> 0.07 over 80 epochs, teacher
# momentum 0.996 -> 1, 2 global crops scale (0.14, 1), no local crops, RCC masks with pred_ratio 0
# or 0.4 +- 0.2. Reported (README): COCO det 45.1 AP^bb, ADE20K 41.6 mIoU (iBOT without de-coupling:
# 42.3 / 39.9, configs/ddssl/ibot_vit-small-p16_8xb64-800e_coco.py). Known differences: gradient
# clipping by the global norm (iBOT clips every parameter's norm), no frozen last layer in epoch 1,
# colour jitter on the CPU (official: Kornia on the GPU).
_base_ = [
    '../_base_/models/ddssl_ibot_vit.py',
    '../_base_/default_runtime.py',
]

max_epochs = 800
iters_per_epoch = 231  # 118,287 COCO train2017 images // 512 (drop_last)
img_size = 224
model = dict(
    cls_loss=dict(warmup_iters=80 * iters_per_epoch),
    patch_loss=dict(warmup_iters=80 * iters_per_epoch))

# ---- data: two global crops (iBOT's global transforms), RCC masks on the 14 x 14 grid
view_common = [
    dict(type='RandomResizedCrop', scale=img_size, crop_ratio_range=(0.14, 1.), interpolation='bicubic',
         backend='pillow'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='HueSafeColorJitter', brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, prob=0.8),
    dict(type='RandomGrayscale', prob=0.2, keep_channels=True, channel_weights=(0.114, 0.587, 0.299)),
]
view_1 = view_common + [dict(type='RandomGaussianBlur', sigma=(0.1, 2.0), kernel_size=23, prob=1.0)]
view_2 = view_common + [
    dict(type='RandomGaussianBlur', sigma=(0.1, 2.0), kernel_size=23, prob=0.1),
    dict(type='Solarize', thr=128, prob=0.2),
]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiView', num_views=[1, 1], transforms=[view_1, view_2]),
    dict(type='RegionCollaborativeCutout', grid_size=img_size // 16, num_masks=2,
         pred_ratio=(0.0, 0.4), pred_ratio_var=(0.0, 0.2)),
    dict(type='PackInputs', algorithm_keys=['rcc_mask']),
]
train_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    drop_last=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='COCOUnlabeled', data_root='data/coco', data_prefix='train2017',
                 pipeline=train_pipeline))

# ---- schedule
optim_wrapper = dict(
    type='AmpOptimWrapper',
    constructor='TrainableParamsOptimWrapperConstructor',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=1e-3 * 512 / 256, betas=(0.9, 0.999), weight_decay=0.04),
    clip_grad=dict(max_norm=3.0),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=10,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 10, eta_min=1e-6, by_epoch=True, begin=10,
         end=max_epochs, convert_to_iter_based=True),
    # zero-decay groups (norms, biases) stay at 0: the ratio scales each group
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min_ratio=10.0,
         T_max=max_epochs, by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(interval=50, by_epoch=True, max_keep_ckpts=3))
auto_scale_lr = dict(base_batch_size=512, enable=False)

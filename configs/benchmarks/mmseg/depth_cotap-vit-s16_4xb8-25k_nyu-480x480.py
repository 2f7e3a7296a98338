# NYUv2 depth estimation with a CoTAP ViT-S/16 (mmseg 1.2 depth tooling: NYUDataset, DepthEstimator,
# VPDDepthHead, SiLogLoss, DepthMetric): blocks 4, 6, 8, 12 -> Feature2Pyramid (x4, x2, x1, x0.5) ->
# VPD's depth head (the strided convs of the VPD head bring the four levels to 1/16, a 1x1 conv fuses
# them, 3 deconvs + 2 bilinear x2 upsample, sigmoid * max_depth); VPD's data pipeline and 25k
# schedule (4 GPUs x 8 images); slide + flip inference 480 / stride 160. Metrics: d1 (delta < 1.25),
# abs_rel, rmse, ... on the Eigen crop ('nyu_crop'), depths in (1e-3, 10) m.
# CoTAP's depth protocol itself could not be read: this is a standard
# ViT + light-head fine-tuning recipe, [inferred]; lr / layer decay are config options.
_base_ = [
    'mmseg::_base_/datasets/nyu.py', 'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_25k.py'
]
custom_imports = dict(imports=['cotap_mm'], allow_failed_imports=False)

crop_size = (480, 480)
meta_keys = ('img_path', 'depth_map_path', 'ori_shape', 'img_shape', 'pad_shape', 'scale_factor',
             'flip', 'flip_direction', 'category_id')
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadDepthAnnotation', depth_rescale_factor=1e-3),  # uint16 mm -> metres
    dict(type='RandomDepthMix', prob=0.25),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomCrop', crop_size=crop_size),
    # VPD uses albumentations (brightness/contrast, gamma, HSV), which is not part of this stack:
    # mmseg's PhotoMetricDistortion plays that role
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs', meta_keys=meta_keys),
]
train_dataloader = dict(batch_size=8, dataset=dict(pipeline=train_pipeline))

model = dict(
    type='DepthEstimator',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=0,  # padded depth = 0 = invalid
        size=crop_size),
    backbone=dict(
        type='mmpretrain.CoTAPViT',
        arch='dino-s',
        img_size=480,
        patch_size=16,
        drop_path_rate=0.1,
        out_type='featmap',
        out_indices=(3, 5, 7, 11),
        final_norm=False,
        init_cfg=dict(
            type='Pretrained', checkpoint='pretrain/cotap_vit-s16.pth', prefix='backbone.')),
    neck=dict(
        type='Feature2Pyramid',
        embed_dim=384,
        rescales=[4, 2, 1, 0.5],
        norm_cfg=dict(type='SyncBN', requires_grad=True)),
    decode_head=dict(
        type='VPDDepthHead',
        in_channels=[384, 384, 384, 384],
        max_depth=10,
        embed_dim=192,
        feature_dim=1536,  # must be embed_dim * 8
        fmap_border=0,
        loss_decode=dict(type='SiLogLoss')),
    train_cfg=dict(),
    test_cfg=dict(mode='slide_flip', crop_size=crop_size, stride=(160, 160)))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='mmpretrain.ViTLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(
        layer_decay_rate=0.9,
        norm_decay_mult=0.,
        bias_decay_mult=0.,
        custom_keys={
            '.pos_embed': dict(decay_mult=0.),
            '.cls_token': dict(decay_mult=0.)
        }))
default_hooks = dict(checkpoint=dict(save_best='rmse', rule='less', max_keep_ckpts=1))
custom_hooks = [dict(type='mmpretrain.PlainCheckpointHook')]

# COCO Mask R-CNN on a plain ViT with ViTDet's simple feature pyramid (Li et al., ECCV 2022,
# https://arxiv.org/abs/2203.16527), built on mmdet's own Mask R-CNN / COCO instance / 1x / runtime
# bases. ViT-S/16 defaults (DINO layout: CoTAP, DINO, iBOT); see the concrete configs next to this
# file. Launch: tools/benchmarks/mmdet/train.sh CONFIG GPUS PRETRAIN.
#
# Choices (where they differ from mmdet's R50 Mask R-CNN):
# * Backbone: mmpretrain.CoTAPViT, out_type='featmap', out_indices=(11,): the last layer's patch tokens
#   after the final LayerNorm, stride 16. The stored position embedding stays the pre-training one
#   (img_size=224 -> 14x14 grid, so DINO/CoTAP checkpoints load without resizing) and is bicubically
#   interpolated to each batch's patch grid in every forward (mmpretrain resize_pos_embed), so any
#   input size works; here all inputs are padded to 1024x1024 (a multiple of the patch size 16) by
#   the data preprocessor (see model.data_preprocessor). Global attention in all blocks (no windows,
#   no relative positions, unlike ViTDet): the pre-trained model is evaluated as it is.
# * Neck: SimpleFPN (cotap_mm/models/necks/simple_fpn.py): 1/4, 1/8 by deconvs, 1/16, 1/32 by
#   max-pool, + P6 (kernel-1 max-pool) for mmdet's 5-level RPN.
# * Norms: the ViT keeps its LayerNorms; neck, RPN and RoI heads use LayerNorm over channels
#   (mmpretrain.LN2d) as ViTDet does (ViTDet: "LN" in FPN and heads, 4conv1fc box head, 2-conv RPN);
#   no BN anywhere, so no SyncBN is needed and the batch per GPU does not matter for normalisation.
# * Data: ViTDet's large-scale jitter at 1024x1024 (resize 0.1-2.0, crop 1024, flip), test resize
#   to the 1024 long side (mmdet's lsj-100e / ViTDet project pipeline), both padded to 1024x1024.
#   8 GPUs x 2 images.
# * Optimiser: ViTDet's AdamW (lr 1e-4, betas 0.9/0.999, wd 0.1) with layer-wise lr decay 0.7 for a
#   12-block ViT (ViTDet's value for ViT-B; the rule is set by depth, so ViT-S/16 with 12 blocks gets
#   the same), no weight decay on norms, pos_embed and cls_token, drop-path 0.1; AMP (fp16).
#   mmdet's ViTDet project implements the layer decay with its own optimizer constructor (not in the
#   wheel; mmdet's LearningRateDecayOptimizerConstructor only handles ConvNeXt, and mmpretrain's needs
#   model.get_layer_depth, which MaskRCNN lacks), so it is written here as per-block
#   paramwise_cfg.custom_keys lr_mult = rate ** (num_layers + 1 - block_depth), block_depth = 0 for
#   patch/pos embedding and cls_token, i + 1 for block i: exactly ViTDet's get_vit_lr_decay_rate.
#   The keys are computed when the file is parsed: change layer_decay_rate / vit_num_layers in a
#   child config (a --cfg-options override of them would not update optim_wrapper).
#   AdamW at lr 1e-4 with batch 16 is mmdet's setting for transformer backbones (Swin, PVT configs);
#   ViTDet uses lr 1e-4 at batch 64. The lr is not rescaled with the batch unless --auto-scale-lr.
# * Schedule: "1x" = 12 epochs of COCO train2017, steps at epochs 8 and 11, 250-iteration linear
#   warm-up (ViTDet's). ViTDet's own recipe is ~100 epochs at batch 64 (LSJ needs long schedules);
#   the 1x/3x lengths follow the dense-SSL papers' practice of short fine-tuning schedules.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['cotap_mm'], allow_failed_imports=False)

# The pre-trained checkpoint: a cotap_mm training checkpoint (CoTAP: the student, keys `backbone.*`;
# use prefix='teacher.backbone.' for the EMA teacher) or tools/model_converters/vit2cotap.py output.
# tools/benchmarks/mmdet/train.sh overrides it (model.backbone.init_cfg.checkpoint=PRETRAIN).
pretrained = 'work_dirs/cotap_vit-small-p16-dino_4xb28-240k_coco-in1k/iter_240000.pth'
image_size = (1024, 1024)
vit_num_layers = 12
layer_decay_rate = 0.7
norm_cfg = dict(type='mmpretrain.LN2d', requires_grad=True)

model = dict(
    # Every batch, train and test, is padded (after normalisation, with 0 = the mean colour) to
    # exactly 1024x1024: the train crops and the resized test images are at most 1024 on each
    # side, so padding to a multiple of 1024 is padding to 1024 (keep it equal to image_size).
    # So the ViT always sees a 64x64 patch grid and its interpolated position embedding is the
    # same in training and testing (ViTDet pads test images to 1024 too). Unlike a `Pad` in the
    # test pipeline, this keeps img_shape = the resized image, so predicted boxes are clipped to
    # the image and not to the padding.
    data_preprocessor=dict(pad_size_divisor=image_size[0]),
    backbone=dict(
        _delete_=True,
        type='mmpretrain.CoTAPViT',
        # DINO ViT-S/16 ('dino-s'), spelled out so that it can be overridden key by key
        arch=dict(embed_dims=384, num_layers=vit_num_layers, num_heads=6,
                  feedforward_channels=1536),
        img_size=224,
        patch_size=16,
        drop_path_rate=0.1,
        out_type='featmap',
        out_indices=(11, ),
        final_norm=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(
        _delete_=True,
        type='SimpleFPN',
        in_channels=384,
        out_channels=256,
        num_outs=5,
        norm_cfg=norm_cfg),
    rpn_head=dict(num_convs=2),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg)))

backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=image_size, ratio_range=(0.1, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_type='absolute_range', crop_size=image_size, recompute_bbox=True,
         allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(batch_size=2, num_workers=4, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        custom_keys={
            'backbone.patch_embed': dict(lr_mult=layer_decay_rate**(vit_num_layers + 1)),
            'backbone.pos_embed': dict(lr_mult=layer_decay_rate**(vit_num_layers + 1),
                                       decay_mult=0.0),
            'backbone.cls_token': dict(lr_mult=layer_decay_rate**(vit_num_layers + 1),
                                       decay_mult=0.0),
            **{f'backbone.layers.{i}.': dict(lr_mult=layer_decay_rate**(vit_num_layers - i))
               for i in range(vit_num_layers)},
            # the blocks' LayerNorms: same lr as their block, no weight decay
            **{f'backbone.layers.{i}.ln': dict(lr_mult=layer_decay_rate**(vit_num_layers - i),
                                               decay_mult=0.0)
               for i in range(vit_num_layers)},
        }))

max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11],
         gamma=0.1),
]
auto_scale_lr = dict(enable=False, base_batch_size=16)

default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3),
    # checkpoints that load with torch.load(weights_only=True) (tools/test.py, --resume)
    plain_checkpoint=dict(type='mmpretrain.PlainCheckpointHook'))

# Frozen linear probe on CoTAP ViT-S/16 patch features, the released protocol (CoTAP's
# train_segmentation.py): the backbone is frozen (frozen_stages = number of blocks: every parameter
# has requires_grad=False; with dropout and drop-path 0, train and eval mode compute the same), a 1x1
# conv (FCNHead with num_convs=0, no dropout, no BN -- Leopart/STEGO/CoTAP use a plain
# nn.Conv2d(C, K, 1)) maps the last-layer patch tokens to class logits, which mmseg upsamples
# bilinearly to the label size; CE with ignore index 255; Adam, constant lr; 100k training samples.
# The data configs set the released pipelines: horizontal flip + RandomResizedCrop (scale 0.64-1) to
# 336 for training; evaluation on images and labels squashed to 448 (labels nearest), after every pass
# over the training set, the best mIoU kept (save_best) and logged.
#
# Features: the *plain* last-layer tokens after the final LayerNorm (C = 384), not CoTAP's 2C-dim
# tokens (those are the linear_cotap-filtered-* configs, see the benchmarks README). Use the
# checkpoint's `backbone.` weights (student); `teacher.backbone.` with `prefix='teacher.backbone.'`
# evaluates the EMA teacher.
_base_ = ['mmseg::_base_/default_runtime.py']
custom_imports = dict(imports=['cotap_mm'], allow_failed_imports=False)

# The released probe pipelines at 336 / 448 (the data configs use them; Cityscapes has its own):
# training on flipped RandomResizedCrops (scale 0.64-1, ratio 3/4-4/3) of image and label;
# evaluation on image and label squashed to 448 x 448 (label nearest, PIL resize like the released
# torchvision one) and scored there (SetOriShapeToImgShape: mmseg resizes the logits to ori_shape).
probe_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='mmpretrain.SegRandomResizedCrop', size=336, scale=(0.64, 1.0)),
    dict(type='PackSegInputs')
]
probe_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', scale=(448, 448), keep_ratio=False, backend='pillow'),
    dict(type='mmpretrain.SetOriShapeToImgShape'),
    dict(type='PackSegInputs')
]
# option, mmseg's standard evaluation: logits resized to the full-resolution label
full_res_label_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(448, 448), keep_ratio=False, backend='pillow'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]

data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(336, 336))  # training crops (the data configs set the pipelines)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type='mmpretrain.CoTAPViT',
        arch='dino-s',
        img_size=224,
        patch_size=16,
        out_type='featmap',
        out_indices=-1,  # the last block
        final_norm=True,
        frozen_stages=12,  # = number of blocks: the whole backbone is frozen
        init_cfg=dict(
            type='Pretrained', checkpoint='pretrain/cotap_vit-s16.pth', prefix='backbone.')),
    decode_head=dict(
        type='FCNHead',
        in_channels=384,
        in_index=-1,
        channels=384,  # num_convs=0 requires channels == in_channels
        num_convs=0,
        kernel_size=1,
        concat_input=False,
        dropout_ratio=0.0,
        num_classes=150,
        norm_cfg=None,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

optim_wrapper = dict(
    type='OptimWrapper', optimizer=dict(type='Adam', lr=3e-3, betas=(0.9, 0.999), weight_decay=0.))
param_scheduler = []  # constant lr (CoTAP's linear protocol)
# 100k training samples; as released, the probe is evaluated after every pass over the training set
# (the data configs set val_interval to one pass; mmengine also evaluates after the last iteration)
# and the best mIoU over these evaluations is the reported number (mildly optimistic: selected on
# the validation set): save_best keeps best_mIoU_iter_*.pth and logs the best value. The last evaluation
# alone (not selected on val): the last `mIoU` row of the log.
train_cfg = dict(type='IterBasedTrainLoop', max_iters=782, val_interval=82)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(
        type='CheckpointHook', by_epoch=False, interval=782, max_keep_ckpts=1, save_best='mIoU',
        rule='greater'))
# checkpoints that load with torch.load(weights_only=True) (--resume, tools/test.py)
custom_hooks = [dict(type='mmpretrain.PlainCheckpointHook')]

# CPU-sized CoTAP demo on generated scenes (SyntheticScenes, no download): tiny ViT (embed 96, 4 layers,
# 3 heads, patch 8), 2 global 64 px crops (8x8 grid, pooling scales 4 and 8) + 2 local 32 px crops,
# 16 prototypes, bank 128, the paper's five loss terms with small queues. Starts from scratch unless
# the backbone is initialised from an image-level checkpoint (tools/demo.py: the tiny DINO of
# configs/dino/, model.backbone.init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')).
_base_ = [
    '../_base_/models/cotap_vit.py',
    '../_base_/datasets/cotap_coco.py',
    '../_base_/schedules/cotap_adamw_cosine.py',
    '../_base_/default_runtime.py',
]

embed_dims = 96
global_size = 64
local_size = 32
model = dict(
    # colour jitter per image in the pipeline below (stronger than the release for generated scenes)
    data_preprocessor=dict(batch_augments=None),
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=embed_dims, num_layers=4, num_heads=3,
                  feedforward_channels=4 * embed_dims),
        img_size=global_size,
        patch_size=8),
    neck=dict(num_prototypes=16),
    patch_head=dict(hidden_channels=256, bottleneck_channels=64, num_prototypes=128),
    cls_head=dict(hidden_channels=256, bottleneck_channels=64, num_prototypes=256),
    cls_loss=dict(warmup_iters=50),  # off (loss_weight 0 in the base config)
    # queues sized for one CPU process (the paper's 262,144 / 32,768 would bloat the checkpoints)
    patch_queue=dict(size=4096),
    cls_queue=dict(size=512),
    pool_scales=(4, 8),
    fg_cfg=dict(keep_mass=0.6, blur_kernel=3, blur_sigma=0.6, min_component_size=0),
    bank_size=128,
    bank_samples_per_step=16,
    kmeans_iters=100,
)

# colour jitter stronger than the paper's (hue 0.5, grayscale 0.5 instead of 0.1 / 0.2): object
# colours of generated scenes are random per instance, colour never tells the class
student_pipeline = [
    dict(type='HueSafeColorJitter', brightness=0.4, contrast=0.4, saturation=0.4, hue=0.5, prob=0.8),
    dict(type='RandomGrayscale', prob=0.5, keep_channels=True, channel_weights=(0.114, 0.587, 0.299)),
    dict(type='RandomGaussianBlur', sigma=(0.1, 1.0), kernel_size=3, prob=0.3),
]
train_pipeline = [
    dict(type='GeometricMultiView',
         num_global=2, global_size=global_size, global_scale=(0.25, 1.0),
         num_local=2, local_size=local_size, local_scale=(0.05, 0.2),
         flip_prob=0.0, min_overlap=(0.02, 0.01),
         student_pipeline=student_pipeline, teacher_views='global'),
    dict(type='PackGeometricViews'),
]
train_dataloader = dict(
    _delete_=True,
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='SyntheticScenes', num_samples=512, split='train', seed=0, image_size=96,
                 num_classes=8, pipeline=train_pipeline))

max_iters = 300
optim_wrapper = dict(optimizer=dict(lr=1e-4))
param_scheduler = [
    # one floor for every group (heads included), 10 % of the backbone lr, as the released 3e-6
    dict(type='CosineAnnealingLR', T_max=max_iters, eta_min=1e-5, by_epoch=False, begin=0,
         end=max_iters),
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', T_max=max_iters,
         eta_min_ratio=10.0, by_epoch=False, begin=0, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
custom_hooks = [
    dict(type='EMATeacherHook', momentum=0.996, end_momentum=1.0),
    # PCA / similarity pictures of the filtered patch features, in WORK_DIR/feature_vis
    dict(type='FeatureVisualizationHook', interval=100, num_images=4, image_size=64),
    # dense/mIoU every 100 iterations: NN retrieval of the 2C features on held-out generated scenes
    # with masks (seed 300: neither the training scenes nor the demo's probe scenes), at the global
    # crop size; the best 2 checkpoints kept (best_dense_mIoU_iter_*.pth). Evaluation only: the
    # training is the same with or without it.
    dict(type='DenseMonitorHook', interval=100, image_size=global_size, features='2C',
         keep_best=2,
         train_dataset=dict(type='SyntheticScenesSeg', num_samples=100, split='train', seed=300,
                            image_size=96, num_classes=8),
         val_dataset=dict(type='SyntheticScenesSeg', num_samples=50, split='val', seed=300,
                          image_size=96, num_classes=8)),
]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=100))
# one image for FeatureExtractor / visualize_features.py: the 64 px of the global crops
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64)),
    dict(type='PackInputs'),
]

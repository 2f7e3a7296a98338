# CoTAP pretraining data: COCO train2017 images, unlabelled (standard layout data/coco/train2017/*.jpg).
# Leopart/CoTAP multi-crop: 2 global 224 crops (scale 0.25-1) + 4 local 96 crops (0.05-0.1), no flip;
# clean teacher copies of the global crops. Colour jitter (0.8, 0.8, 0.8, 0.2) p 0.8, grayscale p 0.2,
# 7x7 blur sigma 0.1-2 p 0.5 on the student copies only, as released: on whole batches, one draw per
# crop index (and per data set / anchor-or-neighbour group), in the model's data preprocessor:
#   model = dict(data_preprocessor=dict(type='CoTAPDataPreprocessor', mean=..., std=..., to_rgb=True,
#                                       batch_augments=[batch_color_augment]))
# (batch_color=True below makes that preprocessor refuse batches if it has no PerViewColorAugment).
# Option, per-image jitter in the data pipeline instead: in GeometricMultiView set
# student_pipeline=per_image_student_pipeline, batch_color=False, and no PerViewColorAugment.
dataset_type = 'COCOUnlabeled'  # unreadable files: an error naming them (skip_bad_images=True skips)
data_root = 'data/coco'

batch_color_augment = dict(
    type='PerViewColorAugment', brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
    jitter_prob=0.8, gray_prob=0.2, blur_prob=0.5, sigma=(0.1, 2.0), kernel_size=7,
    group_keys=('source', 'is_neighbor'))
per_image_student_pipeline = [
    dict(type='HueSafeColorJitter', brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, prob=0.8),
    dict(type='RandomGrayscale', prob=0.2, keep_channels=True, channel_weights=(0.114, 0.587, 0.299)),
    dict(type='RandomGaussianBlur', sigma=(0.1, 2.0), kernel_size=7, prob=0.5),
]
geometric_views = dict(
    type='GeometricMultiView',
    num_global=2, global_size=224, global_scale=(0.25, 1.0),
    num_local=4, local_size=96, local_scale=(0.05, 0.1),
    flip_prob=0.0, min_overlap=(0.02, 0.01),
    student_pipeline=[],
    batch_color=True,
    teacher_views='global')
train_pipeline = [
    dict(type='LoadImageFromFile'),
    geometric_views,
    dict(type='PackGeometricViews'),
]
train_dataloader = dict(
    batch_size=28,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    drop_last=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type=dataset_type, data_root=data_root, data_prefix='train2017',
                 pipeline=train_pipeline))

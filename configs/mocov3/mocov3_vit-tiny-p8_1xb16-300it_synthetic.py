# MoCo v3 tiny ViT on the built-in synthetic scenes (generated, nothing to download): an image-level
# baseline of the dense benchmark (tools/benchmarks/bench_dense_methods.py). It was the demo's start
# until DINO replaced it (1,500 it: 14.2 mIoU vs DINO's 17.4-18.6, see docs/benchmarks.md).
_base_ = ['./mocov3_vit-tiny-p8_1xb16-200it_folder.py']

train_pipeline = [
    dict(type='MultiView', num_views=2, transforms=[{{_base_.view_pipeline}}]),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    dataset=dict(_delete_=True, type='SyntheticScenes', num_samples=2000, split='train', seed=0,
                 image_size=96, num_classes=8, pipeline=train_pipeline))
max_iters = 300
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', T_max=max_iters - 20, by_epoch=False, begin=20, end=max_iters),
]
train_cfg = dict(max_iters=max_iters)
default_hooks = dict(checkpoint=dict(interval=max_iters))

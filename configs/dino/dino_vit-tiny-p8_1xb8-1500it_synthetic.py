# CPU-sized DINO (https://arxiv.org/abs/2104.14294) on generated scenes (SyntheticScenes, no
# download): the image-level starting checkpoint of the demo (tools/demo.py) and of the dense
# benchmark, as CoTAP post-pretrains a DINO-style checkpoint. Tiny ViT (embed 96, 4 layers, 3 heads,
# patch 8), 2 global 64 px + 4 local 32 px crops (../_base_/datasets/synthetic_multicrop.py), batch 8,
# 2,000 scenes. Tuned for this size (measured with the linear probe of tools/demo.py, 1,500 it):
# 32 prototypes and AdamW 1e-3 (18.6 mIoU) rather than 256 and 5e-4 (17.6); MoCo v3 with the
# same budget reaches 14.2, random init 14.3.
_base_ = [
    '../_base_/models/dino_vit.py',
    '../_base_/datasets/synthetic_multicrop.py',
    '../_base_/default_runtime.py',
]

embed_dims = 96
max_iters = 1500
model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=embed_dims, num_layers=4, num_heads=3,
                  feedforward_channels=4 * embed_dims),
        img_size=_base_.global_size, patch_size=8, drop_path_rate=0.0),
    head=dict(in_channels=embed_dims, hidden_channels=256, bottleneck_channels=64,
              num_prototypes=32),
    dino_loss=dict(warmup_iters=50),
)
train_dataloader = dict(dataset=dict(num_samples=2000))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.04),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=3.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=30),
    dict(type='CosineAnnealingLR', T_max=max_iters - 30, eta_min_ratio=0.01, by_epoch=False,
         begin=30, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
# the collapse warning after the 50-iteration temperature warm-up (this run does collapse:
# docs/benchmarks.md, "The DINO start collapses to a near-uniform output")
custom_hooks = [_base_.custom_hooks[0], dict(_base_.custom_hooks[1], start_iter=100)]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=500))
# one image for FeatureExtractor / visualize_features.py: the 64 px of the global crops
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64)),
    dict(type='PackInputs'),
]

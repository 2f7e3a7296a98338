# CPU-sized SCFS on generated scenes (SyntheticScenes, no download): ResNet-18 (layer2-4: C = 128,
# 256, 512), 2 global 64 px crops + 4 local 32 px crops, small heads (bottleneck 64, MLP 256 -> 64,
# DINO head 256 -> 64 -> 256 prototypes), 300 iterations with SGD. Same algorithm and losses as
# scfs_resnet50_8xb32-200e_in1k.py.
_base_ = [
    '../_base_/models/scfs_r50.py',
    '../_base_/datasets/synthetic_multicrop.py',
    '../_base_/default_runtime.py',
]

max_iters = 300
model = dict(
    backbone=dict(depth=18),
    stage_channels=(128, 256, 512),
    head=dict(in_channels=512, hidden_channels=256, bottleneck_channels=64, num_prototypes=256),
    stage_head=dict(mid_channels=64, hidden_channels=256, out_channels=64),
    dino_loss=dict(warmup_iters=50),
    stage_global_loss=dict(warmup_iters=50),
    search_loss=dict(warmup_iters=50),
    freeze_last_layer_iters=0,
)

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.1 * 8 / 256, momentum=0.9, weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=3.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=30),
    dict(type='CosineAnnealingLR', T_max=max_iters - 30, eta_min_ratio=0.05, by_epoch=False,
         begin=30, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=100))
# one image for FeatureExtractor / visualize_features.py: the 64 px of the global crops
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64)),
    dict(type='PackInputs'),
]

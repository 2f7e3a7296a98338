# CPU-sized SCFS on generated scenes (SyntheticScenes, no download) with a tiny ViT (embed 96, 3 blocks,
# 3 heads, patch 8): the searched stages are the token maps after blocks 1, 2 and 3 (out_indices
# (0, 1, 2): 1/3, 2/3 and the end of the depth), the DINO loss uses the CLS token. 2 global 64 px crops
# (8x8 grid) + 4 local 32 px crops (4x4 grid); AdamW as for DINO ViTs. Model layout as
# configs/_base_/models/scfs_vit.py.
_base_ = [
    '../_base_/models/scfs_vit.py',
    '../_base_/datasets/synthetic_multicrop.py',
    '../_base_/default_runtime.py',
]

embed_dims = 96
max_iters = 300
model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=embed_dims, num_layers=3, num_heads=3,
                  feedforward_channels=4 * embed_dims),
        img_size=_base_.global_size, patch_size=8, drop_path_rate=0.0, out_indices=(0, 1, 2)),
    stage_channels=(embed_dims, embed_dims, embed_dims),
    head=dict(in_channels=embed_dims, hidden_channels=256, bottleneck_channels=64,
              num_prototypes=256),
    stage_head=dict(mid_channels=64, hidden_channels=256, out_channels=64),
    dino_loss=dict(warmup_iters=50),
    stage_global_loss=dict(warmup_iters=50),
    search_loss=dict(warmup_iters=50),
)

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-4 * 8 / 256, betas=(0.9, 0.999), weight_decay=0.04),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=3.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=30),
    dict(type='CosineAnnealingLR', T_max=max_iters - 30, eta_min_ratio=0.01, by_epoch=False,
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

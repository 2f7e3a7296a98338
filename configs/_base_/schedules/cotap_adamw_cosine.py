# CoTAP optimisation (official release): AdamW, lr 3e-5 for the backbone and 10x for the heads,
# cosine to 3e-6 for every group (heads included, as released), no warm-up; weight decay cosine 0.024 -> 0.24 with none on norms and biases.
# Configs with another length restate param_scheduler / train_cfg with their max_iters.
max_iters = 240000
optim_wrapper = dict(
    type='OptimWrapper',
    # the EMA teacher is frozen: left out with one log line, not one warning per tensor
    constructor='TrainableParamsOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=3e-5, betas=(0.9, 0.999), weight_decay=0.024),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={
            'patch_head': dict(lr_mult=10.0),
            'cls_head': dict(lr_mult=10.0),
        }))
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=max_iters, eta_min=3e-6, by_epoch=False, begin=0,
         end=max_iters),
    # groups whose decay is 0 (norms, biases) stay at 0: the scheduler scales each group
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', T_max=max_iters,
         eta_min_ratio=10.0, by_epoch=False, begin=0, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)

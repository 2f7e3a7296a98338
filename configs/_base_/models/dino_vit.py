# DINO (https://arxiv.org/abs/2104.14294) ViT-S/16 model, as the official code: CLS token of a
# DINO-layout ViT -> 3-layer GELU MLP (hidden 2048, bottleneck 256), L2-norm, weight-normalised
# last layer with 65536 outputs; centred teacher (momentum 0.9), T_s 0.1, T_t 0.04 -> 0.07; the
# teacher sees the same augmented global crops. Implemented as SCFS without its stages (type DINO).
# Temperature warm-up lengths are in iterations: configs set warmup_iters for their schedule.
data_preprocessor = dict(
    type='SelfSupDataPreprocessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)

model = dict(
    type='DINO',
    data_preprocessor=data_preprocessor,
    backbone=dict(type='CoTAPViT', arch='dino-s', img_size=224, patch_size=16, drop_path_rate=0.1,
                  out_type='featmap', final_norm=True),
    dino_feature='cls',
    head=dict(type='DINOProjectionHead', in_channels=384, hidden_channels=2048,
              bottleneck_channels=256, num_prototypes=65536, num_layers=3, norm_last_layer=True),
    dino_loss=dict(type='DINOClsLoss', student_temp=0.1, teacher_temp=0.07,
                   warmup_teacher_temp=0.04, warmup_iters=0, center_momentum=0.9,
                   loss_weight=1.0),
    teacher_input='student',
)

# EMA teacher: cosine momentum 0.996 -> 1; a warning in the log if the DINO term collapses
# (DINO Sec. 5.3: teacher entropy vs the batch marginal, logged as dino_teacher_*)
custom_hooks = [
    dict(type='EMATeacherHook', momentum=0.996, end_momentum=1.0),
    dict(type='CollapseMonitorHook', window=50, uniform_ratio=0.95, min_marginal_entropy=0.1,
         start_iter=1000),  # a fresh teacher is near uniform too: skip the start
]

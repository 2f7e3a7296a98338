# SCFS (https://arxiv.org/abs/2212.06486, ICCV 2023) model, ResNet-50, as the official code
# (github.com/skyoux/scfs):
# - DINO on the GAP of layer4: 3-layer GELU MLP (hidden 2048, bottleneck 256), L2-norm,
#   weight-normalised last layer with 65536 outputs; centred teacher, T_s 0.1, T_t 0.04 -> 0.07.
# - feature search at layer2/3/4 (mmpretrain ResNet out_indices=(1, 2, 3): C = 512/1024/2048):
#   cosine similarity of the GAP'd student local-crop feature with every position of the teacher's
#   first global crop, re-weighting that map (no softmax); per-stage SCFSHead (residual bottleneck
#   + MLP -> 256-d, L2-norm, no prototypes).
# - loss = L_dino + sum_l 1/2 (L_global^l + L_search^l); the search target is not centred
#   (center_momentum=1.0 keeps the DINOClsLoss centre at 0).
# Temperature warm-up lengths are in iterations: configs set warmup_iters for their schedule.
data_preprocessor = dict(
    type='SelfSupDataPreprocessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)

stage_head = dict(type='SCFSHead', mid_channels=256, hidden_channels=2048, out_channels=256,
                  norm_cfg=dict(type='BN'), mlp_norm_cfg=dict(type='BN1d'))
model = dict(
    type='SCFS',
    data_preprocessor=data_preprocessor,
    backbone=dict(type='ResNet', depth=50, out_indices=(1, 2, 3), norm_cfg=dict(type='BN'),
                  zero_init_residual=False),
    stage_channels=(512, 1024, 2048),
    dino_feature='gap',
    head=dict(type='DINOProjectionHead', in_channels=2048, hidden_channels=2048,
              bottleneck_channels=256, num_prototypes=65536, num_layers=3, norm_last_layer=True),
    stage_head=stage_head,
    dino_loss=dict(type='DINOClsLoss', student_temp=0.1, teacher_temp=0.07,
                   warmup_teacher_temp=0.04, warmup_iters=0, center_momentum=0.9,
                   loss_weight=1.0),
    stage_global_loss=dict(type='DINOClsLoss', student_temp=0.1, teacher_temp=0.07,
                           warmup_teacher_temp=0.04, warmup_iters=0, center_momentum=0.9,
                           loss_weight=0.5),
    search_loss=dict(type='DINOClsLoss', student_temp=0.1, teacher_temp=0.07,
                     warmup_teacher_temp=0.04, warmup_iters=0, center_momentum=1.0,
                     loss_weight=0.5),
    search_cfg=dict(weighting='cosine'),
    search_view=0,
    teacher_input='student',
)

# EMA teacher: DINO's cosine momentum 0.996 -> 1
custom_hooks = [
    dict(type='EMATeacherHook', momentum=0.996, end_momentum=1.0),
    # a warning in the log if the DINO term collapses (DINO Sec. 5.3)
    dict(type='CollapseMonitorHook', window=50, uniform_ratio=0.95, min_marginal_entropy=0.1,
         start_iter=1000),  # a fresh teacher is near uniform too: skip the start
]

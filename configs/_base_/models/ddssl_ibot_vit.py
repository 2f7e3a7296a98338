# iBOT (https://arxiv.org/abs/2111.07832) ViT-S/16 with the de-coupling branch of "Mind Your
# Augmentation" (ICLR 2024, successor of De-coupling and De-positioning Dense SSL,
# https://arxiv.org/abs/2303.16947; official code github.com/ztt1024/denseSSL). Shared DINO head
# (8192 outputs, norm_last_layer=False), [CLS] DINO loss + iBOT patch loss on the RCC-masked tokens;
# de-coupling: 25 % extra samples per view, kept-token patch loss weight 0.3. EMA teacher 0.996 -> 1
# (iBOT default). Schedule-dependent values (temperature warm-up) are set by the configs.
data_preprocessor = dict(
    type='SelfSupDataPreprocessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)

model = dict(
    type='DDSSLiBOT',
    data_preprocessor=data_preprocessor,
    backbone=dict(type='CoTAPViT', arch='dino-s', img_size=224, patch_size=16, drop_path_rate=0.1),
    cls_head=dict(type='DINOProjectionHead', hidden_channels=2048, bottleneck_channels=256,
                  num_prototypes=8192, norm_last_layer=False),  # in_channels = backbone width
    patch_head=None,  # iBOT shared_head=True: the cls_head also projects the patch tokens
    cls_loss=dict(type='DINOClsLoss', student_temp=0.1, teacher_temp=0.07, warmup_teacher_temp=0.04,
                  warmup_iters=0, center_momentum=0.9, loss_weight=1.0),
    patch_loss=dict(type='IBOTPatchLoss', student_temp=0.1, teacher_temp=0.07,
                    warmup_teacher_temp=0.04, warmup_iters=0, center_momentum=0.9, loss_weight=1.0),
    mask_key='rcc_mask',
    num_global_crops=2,
    decoupling=dict(prob=0.25, loss_weight=0.3),  # --dc_sample_ratio 0.25 --dc_ratio 0.3
    depositioning=None,  # v1's de-positioning module: e.g. dict(prob=0.25, loss_weight=0.3)
)

custom_hooks = [
    dict(type='EMATeacherHook', momentum=0.996, end_momentum=1.0),
    # a warning in the log if the DINO term collapses (DINO Sec. 5.3)
    dict(type='CollapseMonitorHook', window=50, uniform_ratio=0.95, min_marginal_entropy=0.1,
         start_iter=1000),  # a fresh teacher is near uniform too: skip the start
]
# the teacher (and the backbone's unused parameters in some branches) are outside the loss graph
find_unused_parameters = True

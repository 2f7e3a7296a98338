# CoTAP (https://arxiv.org/abs/2509.09429) model: DINO-layout ViT + object-aware filter (64 prototypes)
# + DINO projection heads (patch 512, CLS 4096) + EMA teacher. ViT-S/16 sizes; variants override.
# student colour jitter on whole view batches, one draw per crop index (and per data set /
# anchor-or-neighbour group), as released; the data configs leave it to this preprocessor
# (GeometricMultiView(batch_color=True)). Configs that jitter per image in the pipeline set
# model.data_preprocessor.batch_augments=None.
data_preprocessor = dict(
    type='CoTAPDataPreprocessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True,
    batch_augments=[dict(type='PerViewColorAugment')])  # the released values

model = dict(
    type='CoTAP',
    data_preprocessor=data_preprocessor,
    backbone=dict(type='CoTAPViT', arch='dino-s', img_size=224, patch_size=16, drop_path_rate=0.),
    neck=dict(type='ObjectPrototypeNeck', num_prototypes=64, kernel_size=3),  # embed_dims = backbone's
    # in_channels = 2C; the MLP's last layer has no bias, as released
    patch_head=dict(type='DINOProjectionHead', hidden_channels=2048, bottleneck_channels=256,
                    num_prototypes=512, last_mlp_bias=False),
    cls_head=dict(type='DINOProjectionHead', hidden_channels=2048, bottleneck_channels=256,
                  num_prototypes=4096, last_mlp_bias=False),
    # the paper's full objective, five terms of weight 1 (docs/cotap.md); a term is switched off
    # with e.g. --cfg-options model.patch_cluster_loss.loss_weight=0 (its key leaves the log)
    cotap_loss=dict(type='ContinuousAPLoss', tau=0.5, weight_thres=-0.2, alpha=0.1,
                    loss_weight=1.0),
    # fully-foreground RoI cells only, mean per crop pair then over pairs (as released)
    patch_cluster_loss=dict(type='PatchClusterLoss', student_temp=0.1, roi_size=6, fg_threshold=1.0,
                            reduction='pair', loss_weight=1.0),
    cls_cluster_loss=dict(type='ClsClusterLoss', student_temp=0.1, loss_weight=1.0),
    cls_neighbor_loss=dict(type='ClsNeighborLoss', student_temp=0.2, loss_weight=1.0),
    proto_loss=dict(type='PrototypeEntropyLoss', temperature=0.1, loss_weight=1.0),
    # DINO CLS self-distillation: not in the paper's objective, off
    # (--cfg-options model.cls_loss.loss_weight=1 adds it as loss_cls)
    cls_loss=dict(type='DINOClsLoss', student_temp=0.1, teacher_temp=0.07, warmup_teacher_temp=0.04,
                  warmup_iters=0, center_momentum=0.9, loss_weight=0.0),
    # Sinkhorn-Knopp codes and queues (sizes are totals over all GPUs, split across them)
    patch_sinkhorn=dict(epsilon=0.05, iters=3),
    cls_sinkhorn=dict(epsilon=0.07, iters=3),
    patch_queue=dict(size=262144, max_per_step=2048),
    cls_queue=dict(size=32768, max_per_step=100),
    cluster_start_iter=1,  # "queues / Sinkhorn only start after the first step"
    # released behaviour (docs/cotap.md lists each with the alternative)
    patch_codes_on='all',  # Sinkhorn codes for every teacher patch; the queue keeps foreground ones
    cls_neighbor_views='global',  # loss_cls_neighbor on the 2 global student crops
    rank_all_images=False,  # loss_cotap ranks the anchors against their loaded neighbours
    teacher_prototypes='ema',  # the teacher's prototypes follow the student's through the EMA
    # batches whose samples carry data_sample.source (neighbor_collate): COCO feeds the patch
    # terms, ImageNet the CLS terms. COCO-only data through neighbor_collate (source 'coco'
    # everywhere) needs cls_sources=('coco', ). bank_sources=None: the patch_sources; the official
    # code fills the bank from the ImageNet (CLS-branch) images, i.e. bank_sources=('imagenet', )
    # for COCO + ImageNet.
    patch_sources=('coco', ),
    cls_sources=('imagenet', ),
    bank_sources=None,
    pool_scales=(7, 14),
    topk=5,
    num_random=5,
    fg_cfg=dict(keep_mass=0.6, blur_kernel=7, blur_sigma=0.6, min_component_size=0),
    bank_size=1024,
    bank_samples_per_step=32,
    kmeans_iters=3000,
)

# EMA teacher: cosine momentum 0.9997 -> 0.9999 (official training.ema)
custom_hooks = [
    dict(type='EMATeacherHook', momentum=0.9997, end_momentum=0.9999),
]
# backbone's final norm (ln1) and the teacher are not used by the loss graph
find_unused_parameters = True

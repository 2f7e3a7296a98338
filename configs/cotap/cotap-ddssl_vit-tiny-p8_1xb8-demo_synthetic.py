# The CPU-sized CoTAP demo with the de-coupling and de-positioning options (arXiv 2303.16947 and its
# ICLR-2024 successor "Mind Your Augmentation", official code github.com/ztt1024/denseSSL):
# Region Collaborative Cutout masks on the 8 x 8 grid of the two global crops; de-coupling rows
# (25 % of the patch images per global crop, the RCC region or its complement holding another
# image's tokens; kept-token dense loss, weight 0.3) and de-positioning rows (25 % per global
# crop, a random box pasted at a new position / scale onto another image, weight 0.3).
# dense_loss=None: both terms reuse CoTAP's own dense target, the patch-cluster Sinkhorn codes of
# the clean teacher view (dense_loss=dict(type='IBOTPatchLoss'): the iBOT patch cross-entropy).
_base_ = ['./cotap_vit-tiny-p8_1xb8-demo_synthetic.py']

global_size = 64
local_size = 32
model = dict(
    decoupling=dict(prob=0.25, loss_weight=0.3),  # --dc_sample_ratio 0.25 --dc_ratio 0.3
    depositioning=dict(prob=0.25, loss_weight=0.3, box_area=(0.12, 0.30), box_aspect=(0.5, 2.0),
                       scale=(0.5, 1.5), box_key=None),
    dense_loss=None,
    rcc_key='rcc_mask',
)

train_pipeline = [
    dict(type='GeometricMultiView',
         num_global=2, global_size=global_size, global_scale=(0.25, 1.0),
         num_local=2, local_size=local_size, local_scale=(0.05, 0.2),
         flip_prob=0.0, min_overlap=(0.02, 0.01),
         student_pipeline={{_base_.student_pipeline}}, teacher_views='global'),
    # one mask per global crop (num_global_crops), grid = first view (global crop) / patch 8
    dict(type='RegionCollaborativeCutout', patch_size=8, pred_ratio=(0.0, 0.4),
         pred_ratio_var=(0.0, 0.2)),
    dict(type='PackGeometricViews', algorithm_keys=('rcc_mask', )),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

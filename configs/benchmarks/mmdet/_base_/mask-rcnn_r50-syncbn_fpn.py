# Mask R-CNN R50-FPN for self-supervised ResNet-50 checkpoints (e.g. SCFS, DenseCL, MoCo), on mmdet's
# own model base. As in the dense-SSL transfer protocol (MoCo / DenseCL / mmselfsup benchmarks):
# all stages fine-tuned (frozen_stages=-1, norm_eval=False), SyncBN in the backbone, the FPN and the
# RoI heads (4conv1fc box head), since SSL features are not calibrated to ImageNet-supervised BN
# statistics. `norm_cfg` is the one knob: SyncBN needs a distributed run; mmengine's runner turns
# SyncBN into BN in a non-distributed (1 process) run, and a CPU torchrun run needs BN
# (set norm_cfg in a child config, or --cfg-options on each norm_cfg key).
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'
custom_imports = dict(imports=['cotap_mm'], allow_failed_imports=False)

# A checkpoint with `backbone.*` keys (mmpretrain/mmdet ResNet names: conv1, bn1, layer1.0.conv1, ...),
# e.g. a cotap_mm / mmselfsup / mmpretrain training checkpoint. tools/benchmarks/mmdet/train.sh
# overrides it (model.backbone.init_cfg.checkpoint=PRETRAIN).
pretrained = 'checkpoints/resnet50_ssl_pretrain.pth'
norm_cfg = dict(type='SyncBN', requires_grad=True)

model = dict(
    backbone=dict(
        frozen_stages=-1,
        norm_cfg=norm_cfg,
        norm_eval=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg)))

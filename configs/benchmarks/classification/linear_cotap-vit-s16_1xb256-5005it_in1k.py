# ImageNet-1k linear classification of a CoTAP (or any DINO-layout) ViT-S/16: the frozen backbone's
# last-layer CLS token after its final norm (C = 384), a linear head (_base_/linear_in1k.py: the
# released protocol). CoTAP README (the release's own linear evaluation): DINO ViT-S/16 77.0 ->
# 79.1 with CoTAP; this config probes the plain C token, the 2C one is
# linear_cotap-filtered-vit-s16_1xb256-5005it_in1k.py.
# Weights: a checkpoint with backbone.* keys (a CoTAP / DINO training checkpoint: the student; one
# converted by vit2cotap.py or published by publish_model.py).
#   python tools/train.py configs/benchmarks/classification/linear_cotap-vit-s16_1xb256-5005it_in1k.py \
#       --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/cotap/iter_240000.pth
_base_ = ['./_base_/linear_in1k.py']

model = dict(
    type='ImageClassifier',
    data_preprocessor=_base_.data_preprocessor,
    backbone=dict(
        type='CoTAPViT',
        arch='dino-s',
        img_size=224,
        patch_size=16,
        out_type='cls_token',
        final_norm=True,
        frozen_stages=12,
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/cotap_vit-s16.pth',
                      prefix='backbone.')),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=384,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        init_cfg=dict(type='Normal', std=0.01, layer='Linear')))

# COCO Mask R-CNN, ViT-B/16 + ViTDet simple feature pyramid, LSJ 1024, AdamW + layer decay 0.7,
# 3x (36 epochs, lr steps at epochs 27 and 33).
_base_ = './mask-rcnn_vit-base-p16-simplefpn_8xb2-lsj-1x_coco.py'

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs, val_interval=3)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33],
         gamma=0.1),
]

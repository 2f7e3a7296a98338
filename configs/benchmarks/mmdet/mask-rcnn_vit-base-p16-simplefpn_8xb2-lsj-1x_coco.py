# COCO Mask R-CNN, ViT-B/16 (DINO layout, e.g. CoTAP / DINO / iBOT weights) + ViTDet simple feature
# pyramid, LSJ 1024, AdamW + layer decay 0.7 (ViTDet's ViT-B value), drop-path 0.1, 1x (12 epochs),
# 8 GPUs x 2 images. All choices are explained in _base_/mask-rcnn_vit-simplefpn_lsj-1x_coco.py.
_base_ = './_base_/mask-rcnn_vit-simplefpn_lsj-1x_coco.py'

pretrained = 'work_dirs/cotap_vit-base-p16-dino_8xb16-210k_coco-in1k/iter_210000.pth'
model = dict(
    backbone=dict(
        # DINO ViT-B/16 ('dino-b')
        arch=dict(embed_dims=768, num_layers=12, num_heads=12, feedforward_channels=3072),
        init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=768))

# COCO Mask R-CNN, ViT-S/16 (DINO layout, e.g. CoTAP / DINO / iBOT weights) + ViTDet simple feature
# pyramid, LSJ 1024, AdamW + layer decay 0.7, 1x (12 epochs), 8 GPUs x 2 images. All choices are
# explained in _base_/mask-rcnn_vit-simplefpn_lsj-1x_coco.py.
#   tools/benchmarks/mmdet/train.sh configs/benchmarks/mmdet/mask-rcnn_vit-small-p16-simplefpn_8xb2-lsj-1x_coco.py 8 PRETRAIN
_base_ = './_base_/mask-rcnn_vit-simplefpn_lsj-1x_coco.py'

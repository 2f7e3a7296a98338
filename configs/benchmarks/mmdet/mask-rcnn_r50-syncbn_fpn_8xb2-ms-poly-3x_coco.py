# COCO Mask R-CNN R50-FPN (SyncBN everywhere) from a self-supervised ResNet-50, mmdet's 3x schedule:
# multi-scale training (short side 640-800), polygon masks, train set repeated 3x for 12 "epochs"
# (= 36 epochs, lr steps at 27 and 33).
_base_ = [
    './_base_/mask-rcnn_r50-syncbn_fpn.py',
    'mmdet::common/ms-poly_3x_coco-instance.py',
]
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3),
    plain_checkpoint=dict(type='mmpretrain.PlainCheckpointHook'))

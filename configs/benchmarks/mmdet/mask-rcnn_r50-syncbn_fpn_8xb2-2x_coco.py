# COCO Mask R-CNN R50-FPN (SyncBN everywhere) from a self-supervised ResNet-50, mmdet's 2x schedule
# (24 epochs, lr steps at 16 and 22, single scale 1333x800).
_base_ = [
    './_base_/mask-rcnn_r50-syncbn_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_2x.py',
    'mmdet::_base_/default_runtime.py',
]
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3),
    plain_checkpoint=dict(type='mmpretrain.PlainCheckpointHook'))

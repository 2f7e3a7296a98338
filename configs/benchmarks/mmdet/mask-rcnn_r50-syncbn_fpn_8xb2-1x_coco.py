# COCO Mask R-CNN R50-FPN (SyncBN everywhere, all stages fine-tuned) from a self-supervised ResNet-50,
# mmdet's 1x schedule (12 epochs, SGD lr 0.02 at 8 GPUs x 2 images, single scale 1333x800).
#   tools/benchmarks/mmdet/train.sh configs/benchmarks/mmdet/mask-rcnn_r50-syncbn_fpn_8xb2-1x_coco.py 8 PRETRAIN
_base_ = [
    './_base_/mask-rcnn_r50-syncbn_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3),
    # checkpoints that load with torch.load(weights_only=True) (tools/test.py, --resume)
    plain_checkpoint=dict(type='mmpretrain.PlainCheckpointHook'))

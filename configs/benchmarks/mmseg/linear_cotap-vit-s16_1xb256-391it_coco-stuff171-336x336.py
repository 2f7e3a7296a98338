# COCO-Stuff-164k (171 classes, mmseg's *_labelTrainIds.png) frozen linear probe of CoTAP ViT-S/16,
# all train2017 / val2017 images; settings of the COCO-Stuff-27 probe (batch 256, lr 3e-3, 100k
# samples; that config inherits this one), i.e. the released probe protocol: flip + RandomResizedCrop
# (0.64-1) to 336 for training, images and labels squashed to 448 for evaluation, best mIoU kept (the
# standard mmseg evaluation: full_res_label_test_pipeline, see the ADE20K probe) -- CoTAP's code has no
# 171-class protocol, so these are [inferred]. One pass over the 118,287 images (462 iterations) is
# longer than the 391 iterations: evaluated once, at the end.
_base_ = ['mmseg::_base_/datasets/coco-stuff164k.py', './_base_/linear-probe_cotap-vit-s16.py']

train_dataloader = dict(
    batch_size=256, num_workers=8, dataset=dict(pipeline={{_base_.probe_train_pipeline}}))
val_dataloader = dict(batch_size=1, dataset=dict(pipeline={{_base_.probe_test_pipeline}}))
test_dataloader = val_dataloader
model = dict(decode_head=dict(num_classes=171))
train_cfg = dict(max_iters=391, val_interval=462)  # one pass (> 391: at the end only)
default_hooks = dict(checkpoint=dict(interval=391))

# ADE20K (150 classes) frozen linear probe of CoTAP ViT-S/16, the released protocol: batch 128, lr 3e-3,
# 100k samples (782 iterations); training on horizontally flipped RandomResizedCrops (scale 0.64-1,
# ratio 3/4-4/3) of image and label resized to 336x336; evaluation after every pass over the 20,210
# training images (157 iterations) on images and labels squashed to 448x448 (labels nearest), best
# mIoU kept. The standard mmseg evaluation (logits resized to the full-resolution labels) instead:
#   _base_ = ['./linear_cotap-vit-s16_1xb128-782it_ade20k-336x336.py']
#   val_dataloader = dict(dataset=dict(pipeline={{_base_.full_res_label_test_pipeline}}))
#   test_dataloader = val_dataloader
_base_ = ['mmseg::_base_/datasets/ade20k.py', './_base_/linear-probe_cotap-vit-s16.py']

train_dataloader = dict(
    batch_size=128, num_workers=8, dataset=dict(pipeline={{_base_.probe_train_pipeline}}))
val_dataloader = dict(batch_size=1, dataset=dict(pipeline={{_base_.probe_test_pipeline}}))
test_dataloader = val_dataloader
model = dict(decode_head=dict(num_classes=150))
train_cfg = dict(val_interval=157)  # one pass over the training set

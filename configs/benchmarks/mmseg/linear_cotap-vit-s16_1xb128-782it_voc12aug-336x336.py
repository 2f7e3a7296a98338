# Pascal VOC 2012 (21 classes, background included) frozen linear probe of CoTAP ViT-S/16, the released
# protocol: trained on trainaug (10,582 images: ImageSets/Segmentation/aug.txt with the
# SegmentationClassAug masks, as written by mmseg's voc_aug converter), evaluated on val (1,449);
# batch 128, lr 3e-3, 100k samples (782 iterations); flip + RandomResizedCrop (0.64-1) to 336 for
# training; evaluation after every pass (82 iterations) on images and labels squashed to 448, best mIoU
# kept (the standard mmseg evaluation: full_res_label_test_pipeline, see the ADE20K probe). mmseg's
# pascal_voc12_aug base concatenates train.txt again, which repeats the 1,464 VOC train images; the
# probe uses trainaug once.
_base_ = ['mmseg::_base_/datasets/pascal_voc12_aug.py', './_base_/linear-probe_cotap-vit-s16.py']

train_dataloader = dict(
    batch_size=128,
    num_workers=8,
    dataset=dict(
        _delete_=True,
        type='PascalVOCDataset',
        data_root='data/VOCdevkit/VOC2012',
        data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassAug'),
        ann_file='ImageSets/Segmentation/aug.txt',
        pipeline={{_base_.probe_train_pipeline}}))
val_dataloader = dict(batch_size=1, dataset=dict(pipeline={{_base_.probe_test_pipeline}}))
test_dataloader = val_dataloader
model = dict(decode_head=dict(num_classes=21))
train_cfg = dict(val_interval=82)  # one pass over trainaug

# Pascal VOC 2012 (21 classes, background included) frozen linear probe of CoTAP ViT-S/16
# (METHOD_cotap §7.1): trained on trainaug (10,582 images: ImageSets/Segmentation/aug.txt with the
# SegmentationClassAug masks, as written by mmseg's voc_aug converter), evaluated on val (1,449);
# batch 128, lr 3e-3, 100k samples (782 iterations). mmseg's pascal_voc12_aug base concatenates
# train.txt again, which repeats the 1,464 VOC train images; the probe uses trainaug once.
_base_ = ['mmseg::_base_/datasets/pascal_voc12_aug.py', './_base_/linear-probe_cotap-vit-s16.py']

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    # random crop of 64-100 % of the image area resized to 336 x 336 (see the ADE20K probe)
    dict(type='RandomResize', scale=(336, 336), ratio_range=(1.0, 1.25), keep_ratio=False),
    dict(type='RandomCrop', crop_size=(336, 336)),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(448, 448), keep_ratio=False),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=128,
    num_workers=8,
    dataset=dict(
        _delete_=True,
        type='PascalVOCDataset',
        data_root='data/VOCdevkit/VOC2012',
        data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassAug'),
        ann_file='ImageSets/Segmentation/aug.txt',
        pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
model = dict(decode_head=dict(num_classes=21))

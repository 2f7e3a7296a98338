# COCO-Stuff-27 frozen linear probe of CoTAP ViT-S/16 (METHOD_cotap §7.1; the README's "Linear Seg"
# column): the 171 mmseg COCO-Stuff train ids merged into the 27 supercategories of IIC/STEGO
# (cotap_mm.datasets.COCOStuff27Dataset), on STEGO's curated image lists (put IIC/STEGO's
# Coco164kFull_Stuff_Coarse.txt and Coco164kFull_Stuff_Coarse_7.txt under data_root/curated/; set
# ann_file='' to use every image); batch 256, lr 3e-3, 100k samples (391 iterations).
_base_ = ['mmseg::_base_/datasets/coco-stuff164k.py', './_base_/linear-probe_cotap-vit-s16.py']

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),  # applies the dataset's 171 -> 27 label_map
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
    batch_size=256,
    num_workers=8,
    dataset=dict(
        type='COCOStuff27Dataset',
        ann_file='curated/train2017/Coco164kFull_Stuff_Coarse.txt',
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    dataset=dict(
        type='COCOStuff27Dataset',
        ann_file='curated/val2017/Coco164kFull_Stuff_Coarse_7.txt',
        pipeline=test_pipeline))
test_dataloader = val_dataloader
model = dict(decode_head=dict(num_classes=27))
train_cfg = dict(max_iters=391, val_interval=391)
default_hooks = dict(checkpoint=dict(interval=391))

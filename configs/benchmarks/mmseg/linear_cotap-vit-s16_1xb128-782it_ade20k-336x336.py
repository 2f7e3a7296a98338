# ADE20K (150 classes) frozen linear probe of CoTAP ViT-S/16 (METHOD_cotap §7.1): batch 128, lr 3e-3,
# 100k samples (782 iterations); train crops 336x336, evaluation on images squashed to 448x448 with the
# logits resized to the full-resolution labels (mmseg's usual evaluation; CoTAP resized the labels to
# 448x448 instead).
_base_ = ['mmseg::_base_/datasets/ade20k.py', './_base_/linear-probe_cotap-vit-s16.py']

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),  # reduce_zero_label comes from ADE20KDataset (True)
    # squash to (336 r) x (336 r), r ~ U(1, 1.25), then a random 336 x 336 crop: a random crop of
    # 64-100 % of the image area resized to 336 x 336 (CoTAP's RandomResizedCrop(scale=(0.64, 1)),
    # without its aspect-ratio jitter)
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
train_dataloader = dict(batch_size=128, num_workers=8, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
model = dict(decode_head=dict(num_classes=150))

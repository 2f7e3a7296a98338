# ADE20K (150 classes) UperNet fine-tuning of CoTAP ViT-S/16, 8 GPUs x 2 images, 160k iterations
# (mmseg's MAE/BEiT recipe): blocks 4, 6, 8, 12 -> Feature2Pyramid (x4, x2, x1, x0.5) -> UPerHead +
# FCN auxiliary head; AdamW with layer-wise lr decay; slide inference 512 / stride 341.
_base_ = [
    'mmseg::_base_/models/upernet_mae.py', 'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_160k.py'
]
custom_imports = dict(imports=['cotap_mm'], allow_failed_imports=False)

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='mmpretrain.CoTAPViT',
        arch='dino-s',
        img_size=512,  # the checkpoint's 14x14 pos-embed is resized to 32x32 when loading
        patch_size=16,
        drop_path_rate=0.1,
        out_type='featmap',
        out_indices=(3, 5, 7, 11),
        # the four levels are treated alike (as mmseg's MAE/BEiT): no final norm on the last one
        final_norm=False,
        init_cfg=dict(
            type='Pretrained', checkpoint='pretrain/cotap_vit-s16.pth', prefix='backbone.')),
    neck=dict(embed_dim=384, rescales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[384, 384, 384, 384], channels=512, num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

# mmseg's MAE-B / BEiT-B ADE20K recipe; mmseg's own layer-decay constructors only accept BEiT/MAE
# backbones, ViTLayerDecayOptimWrapperConstructor reads mmpretrain ViT names (backbone.layers.N).
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='mmpretrain.ViTLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(
        layer_decay_rate=0.65,
        norm_decay_mult=0.,
        bias_decay_mult=0.,
        custom_keys={
            '.pos_embed': dict(decay_mult=0.),
            '.cls_token': dict(decay_mult=0.)
        }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False)
]
custom_hooks = [dict(type='mmpretrain.PlainCheckpointHook')]
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader

# CoTAP post-pretraining of DINO ViT-B/16 on COCO train2017: 8 GPUs x 16 images, 210k iterations
# (official schedule for DINO B/16). Everything else as the ViT-S/16 config.
_base_ = ['./cotap_vit-small-p16_4xb28-240k_coco.py']

load_from = 'checkpoints/dino_vitb16_cotap.pth'
model = dict(backbone=dict(arch='dino-b'))
train_dataloader = dict(batch_size=16)

max_iters = 210000
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=max_iters, eta_min_ratio=0.1, by_epoch=False, begin=0,
         end=max_iters),
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', T_max=max_iters,
         eta_min_ratio=10.0, by_epoch=False, begin=0, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
auto_scale_lr = dict(base_batch_size=128, enable=False)

# CoTAP, COCO-only option (data ablation, see cotap_vit-small-p16_4xb28-240k_coco.py): DINO ViT-B/16 on
# COCO train2017 with k-NN neighbours, 8 GPUs x 16 anchors, 210k iterations (the DINO B/16 schedule); the
# CLS terms and the prototype bank use the COCO images. Released run on COCO + ImageNet:
# cotap_vit-base-p16-dino_8xb16-210k_coco-in1k.py.
# Start checkpoint: DINO ViT-B/16 (facebookresearch/dino) dino_vitbase16_pretrain.pth, converted with
#   python tools/model_converters/vit2cotap.py dino_vitbase16_pretrain.pth \
#       checkpoints/dino_vitb16_cotap.pth --src-format dino
# Neighbour file (k = 7, the COCO one of the released configs; DINO ViT-B/16 features):
#   python tools/misc/compute_neighbors.py \
#       configs/cotap/cotap_vit-base-p16-dino_8xb16-210k_coco-in1k.py \
#       --checkpoint checkpoints/dino_vitb16_cotap.pth --data-root data/coco --data-prefix train2017 \
#       -k 7 --out data/coco/knn/train2017_dino_vitb16_k7.npz
_base_ = ['./cotap_vit-small-p16_4xb28-240k_coco.py']

load_from = 'checkpoints/dino_vitb16_cotap.pth'
model = dict(backbone=dict(arch='dino-b'))
train_dataloader = dict(batch_size=16)

max_iters = 210000
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=max_iters, eta_min=3e-6, by_epoch=False, begin=0,
         end=max_iters),
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', T_max=max_iters,
         eta_min_ratio=10.0, by_epoch=False, begin=0, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
auto_scale_lr = dict(base_batch_size=128, enable=False)  # 8 GPUs x 16

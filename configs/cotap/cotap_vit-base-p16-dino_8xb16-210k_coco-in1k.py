# CoTAP released run: DINO ViT-B/16 post-pretrained on COCO train2017 + ImageNet-1k, 8 GPUs x 16
# index groups (16 COCO + 16 ImageNet anchors + neighbours per GPU), 210k iterations (official
# schedule for DINO B/16); everything else (AdamW 3e-5 / heads 3e-4 cosine to 3e-6, wd 0.024 -> 0.24,
# fp16, the five loss terms, bank from ImageNet) as the DINO ViT-S/16 config it inherits.
# Output tokens 2C = 1536.
# Start checkpoint: DINO ViT-B/16 (facebookresearch/dino) dino_vitbase16_pretrain.pth, converted with
#   python tools/model_converters/vit2cotap.py dino_vitbase16_pretrain.pth \
#       checkpoints/dino_vitb16_cotap.pth --src-format dino
# Neighbour files (k = 7, shared by all released configs; DINO ViT-B/16 features, see the DINO
# ViT-S/16 config):
#   python tools/misc/compute_neighbors.py \
#       configs/cotap/cotap_vit-base-p16-dino_8xb16-210k_coco-in1k.py \
#       --checkpoint checkpoints/dino_vitb16_cotap.pth --data-root data/coco --data-prefix train2017 \
#       -k 7 --out data/coco/knn/train2017_dino_vitb16_k7.npz
#   torchrun --nproc_per_node 8 tools/misc/compute_neighbors.py \
#       configs/cotap/cotap_vit-base-p16-dino_8xb16-210k_coco-in1k.py \
#       --checkpoint checkpoints/dino_vitb16_cotap.pth --data-root data/imagenet --data-prefix train \
#       -k 7 --out data/imagenet/knn/train_dino_vitb16_k7.npz --launcher pytorch
_base_ = ['./cotap_vit-small-p16-dino_4xb28-240k_coco-in1k.py']

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

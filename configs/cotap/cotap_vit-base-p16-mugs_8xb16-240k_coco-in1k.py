# CoTAP released run: Mugs ViT-B/16 post-pretrained on COCO train2017 + ImageNet-1k, 8 GPUs x 16, 240k
# iterations (official schedule for iBOT / Mugs B/16; DINO B/16 has 210k); everything else as the DINO
# ViT-B/16 config it inherits (and that one as the DINO ViT-S/16 config).
# Start checkpoint: the public ViT-B/16 checkpoint of Mugs (sail-sg/mugs; its file name is not in our
# notes, MUGS_VITB16.pth below stands for the downloaded file; DINO's ViT key layout), converted with
#   python tools/model_converters/vit2cotap.py MUGS_VITB16.pth \
#       checkpoints/mugs_vitb16_cotap.pth --src-format dino
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
_base_ = ['./cotap_vit-base-p16-dino_8xb16-210k_coco-in1k.py']

load_from = 'checkpoints/mugs_vitb16_cotap.pth'

max_iters = 240000
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=max_iters, eta_min_ratio=0.1, by_epoch=False, begin=0,
         end=max_iters),
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', T_max=max_iters,
         eta_min_ratio=10.0, by_epoch=False, begin=0, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)

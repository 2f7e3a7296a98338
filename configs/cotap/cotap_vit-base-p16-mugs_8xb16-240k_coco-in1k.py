# CoTAP released run: Mugs ViT-B/16 post-pretrained on COCO train2017 + ImageNet-1k, 8 GPUs x 16, 240k
# iterations (official schedule for iBOT / Mugs B/16; DINO B/16 has 210k): the Mugs ViT-S/16
# config it inherits (240k iterations; everything else as the DINO ViT-S/16 config) at the sizes
# of the DINO ViT-B/16 config (ViT-B/16 backbone, 16 anchors per GPU).
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
_base_ = ['./cotap_vit-small-p16-mugs_4xb28-240k_coco-in1k.py']

load_from = 'checkpoints/mugs_vitb16_cotap.pth'
model = dict(backbone=dict(arch='dino-b'))
train_dataloader = dict(batch_size=16)
auto_scale_lr = dict(base_batch_size=128, enable=False)  # 8 GPUs x 16

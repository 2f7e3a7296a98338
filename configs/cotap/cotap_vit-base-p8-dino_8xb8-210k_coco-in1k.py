# CoTAP released run: DINO ViT-B/8 post-pretrained on COCO train2017 + ImageNet-1k, 8 GPUs x 8
# index groups, 210k iterations (official schedule for DINO B/8); everything else as the DINO
# ViT-B/16 config it inherits (and that one as the DINO ViT-S/16 config).
# Patch 8 at 224 px gives a 28 x 28 grid (96 px local crops: 12 x 12). The released run keeps the
# CoTAP pooling scales of its full_loss config, (7, 14), for /8 too (cells of 4 x 4 and 2 x 2
# patches); --cfg-options "model.pool_scales=(14,28)" takes the same fractions of the grid as /16
# instead. top-k 5, RoI 6 x 6 and the 3 x 3 filter stay as released.
# Start checkpoint: DINO ViT-B/8 (facebookresearch/dino) dino_vitbase8_pretrain.pth, converted with
#   python tools/model_converters/vit2cotap.py dino_vitbase8_pretrain.pth \
#       checkpoints/dino_vitb8_cotap.pth --src-format dino
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

load_from = 'checkpoints/dino_vitb8_cotap.pth'
model = dict(backbone=dict(patch_size=8), pool_scales=(7, 14))
train_dataloader = dict(batch_size=8)
auto_scale_lr = dict(base_batch_size=64, enable=False)  # 8 GPUs x 8

# CoTAP released run: iBOT ViT-S/16 post-pretrained on COCO train2017 + ImageNet-1k, 4 GPUs x 28, 240k
# iterations; everything else (data with k-NN neighbours, AdamW 3e-5 / heads 3e-4 cosine to 3e-6, wd
# 0.024 -> 0.24, fp16, the five loss terms, bank from ImageNet) as the DINO ViT-S/16 config it inherits.
# Start checkpoint: iBOT ViT-S/16 (bytedance/ibot, vits_16) checkpoint_teacher.pth, converted with
#   python tools/model_converters/vit2cotap.py ibot/vits_16/checkpoint_teacher.pth \
#       checkpoints/ibot_vits16_cotap.pth --src-format ibot
# Neighbour files (k = 7, shared by all released configs; DINO ViT-B/16 features, see the base config):
#   python tools/misc/compute_neighbors.py \
#       configs/cotap/cotap_vit-base-p16-dino_8xb16-210k_coco-in1k.py \
#       --checkpoint checkpoints/dino_vitb16_cotap.pth --data-root data/coco --data-prefix train2017 \
#       -k 7 --out data/coco/knn/train2017_dino_vitb16_k7.npz
#   torchrun --nproc_per_node 8 tools/misc/compute_neighbors.py \
#       configs/cotap/cotap_vit-base-p16-dino_8xb16-210k_coco-in1k.py \
#       --checkpoint checkpoints/dino_vitb16_cotap.pth --data-root data/imagenet --data-prefix train \
#       -k 7 --out data/imagenet/knn/train_dino_vitb16_k7.npz --launcher pytorch
_base_ = ['./cotap_vit-small-p16-dino_4xb28-240k_coco-in1k.py']

load_from = 'checkpoints/ibot_vits16_cotap.pth'

# CoTAP (https://arxiv.org/abs/2509.09429), COCO-only option (the official code has a COCO-only data
# config next to coco+in1k, probably for a data ablation): DINO ViT-S/16
# post-pretrained on COCO train2017 alone, every image with one of its 7 precomputed k-NN neighbours;
# 4 GPUs x 28 anchors (+ neighbours: 56 images per GPU), 240k iterations, AdamW lr 3e-5 (heads 3e-4)
# cosine to 3e-6, wd cosine 0.024 -> 0.24 (none on norms / biases), fp16 (AmpOptimWrapper; CPU-only:
# --cfg-options optim_wrapper.type=OptimWrapper), the five loss terms of weight 1.
# Differences to the released runs (cotap_vit-small-p16-dino_4xb28-240k_coco-in1k.py): COCO only, so
# the CLS terms (cls_cluster, cls_neighbor) and the prototype bank also use the COCO images
# (cls_sources=('coco',): neighbor_collate marks every COCO sample source='coco'; with the default
# ('imagenet',) the CLS terms would get no samples); the epoch is COCO's 118,287 images.
# Start checkpoint: DINO ViT-S/16 (facebookresearch/dino) dino_deitsmall16_pretrain.pth, converted with
#   python tools/model_converters/vit2cotap.py dino_deitsmall16_pretrain.pth \
#       checkpoints/dino_vits16_cotap.pth --src-format dino
# Neighbour file (k = 7, the COCO one of the released configs; DINO ViT-B/16 features):
#   python tools/misc/compute_neighbors.py \
#       configs/cotap/cotap_vit-base-p16-dino_8xb16-210k_coco-in1k.py \
#       --checkpoint checkpoints/dino_vitb16_cotap.pth --data-root data/coco --data-prefix train2017 \
#       -k 7 --out data/coco/knn/train2017_dino_vitb16_k7.npz
_base_ = [
    '../_base_/models/cotap_vit.py',
    '../_base_/datasets/cotap_coco_nn.py',
    '../_base_/schedules/cotap_adamw_cosine.py',
    '../_base_/default_runtime.py',
    '../_base_/dense_monitor/coco_stuff27_nn.py',
]

# student (and, by EMATeacherHook, teacher) initialised from the converted DINO weights;
# non-strict: the filter's LayerNorms, the prototypes and the heads are new.
load_from = 'checkpoints/dino_vits16_cotap.pth'

model = dict(patch_sources=('coco', ), cls_sources=('coco', ), bank_sources=('coco', ))

coco_neighbors_file = 'data/coco/knn/train2017_dino_vitb16_k7.npz'
train_dataloader = dict(batch_size=28, dataset=dict(neighbors_file=coco_neighbors_file))

optim_wrapper = dict(type='AmpOptimWrapper')  # fp16 (loss_scale 'dynamic' by default)
default_hooks = dict(checkpoint=dict(interval=10000, max_keep_ckpts=3))
auto_scale_lr = dict(base_batch_size=112, enable=False)  # 4 GPUs x 28
randomness = dict(seed=0, deterministic=False)
# dense/mIoU on COCO-Stuff-27 every 10k iterations, best 5 checkpoints kept
# (../_base_/dense_monitor/coco_stuff27_nn.py: data paths, how to point them elsewhere)
custom_hooks = [*_base_.custom_hooks, _base_.dense_monitor]

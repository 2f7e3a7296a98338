# CoTAP (https://arxiv.org/abs/2509.09429), released run: DINO ViT-S/16 post-pretrained on COCO
# train2017 + ImageNet-1k train (released scripts/run_*.sh and configs/dataset_train/coco+in1k.yaml;
# docs/cotap.md compares this implementation with the released code).
# Every other released config inherits from this one.
#   data      every index: one COCO image (patch terms) and one ImageNet image (CLS terms), each with one
#             of its 7 precomputed k-NN neighbours; 4 GPUs x 28 index groups = 28 COCO + 28 ImageNet
#             anchors (+ neighbours: 112 images) per GPU; 2 x 224 + 4 x 96 crops each
#   schedule  240k iterations; AdamW lr 3e-5 (heads 3e-4), cosine to 3e-6, no warm-up; weight decay
#             cosine 0.024 -> 0.24 (none on norms / biases); fp16 (AmpOptimWrapper, dynamic loss scale;
#             on a CPU-only machine add --cfg-options optim_wrapper.type=OptimWrapper); EMA teacher
#             0.9997 -> 0.9999; seed 0
#   objective the five terms of weight 1 (cotap, patch_cluster, cls_cluster, cls_neighbor,
#             proto_entropy); the prototype bank is filled from the ImageNet images (bank_sources)
# Start checkpoint: DINO ViT-S/16 (facebookresearch/dino) dino_deitsmall16_pretrain.pth, converted with
#   python tools/model_converters/vit2cotap.py dino_deitsmall16_pretrain.pth \
#       checkpoints/dino_vits16_cotap.pth --src-format dino
# Neighbour files (k = 7), one set shared by every released config like the official nns.zip
# (nns_vit_base_*_train_None_224.npz: DINO ViT-B features by STEGO's naming; we take DINO ViT-B/16 at
# 224 px, our choice; point the two neighbors_file keys elsewhere to use other ones):
#   python tools/model_converters/vit2cotap.py dino_vitbase16_pretrain.pth \
#       checkpoints/dino_vitb16_cotap.pth --src-format dino
#   python tools/misc/compute_neighbors.py \
#       configs/cotap/cotap_vit-base-p16-dino_8xb16-210k_coco-in1k.py \
#       --checkpoint checkpoints/dino_vitb16_cotap.pth --data-root data/coco --data-prefix train2017 \
#       -k 7 --out data/coco/knn/train2017_dino_vitb16_k7.npz
#   torchrun --nproc_per_node 8 tools/misc/compute_neighbors.py \
#       configs/cotap/cotap_vit-base-p16-dino_8xb16-210k_coco-in1k.py \
#       --checkpoint checkpoints/dino_vitb16_cotap.pth --data-root data/imagenet --data-prefix train \
#       -k 7 --out data/imagenet/knn/train_dino_vitb16_k7.npz --launcher pytorch
# Ablations (one --cfg-options away): see configs/cotap_vits16_coco.py; COCO-only data:
# cotap_vit-small-p16_4xb28-240k_coco.py.
_base_ = [
    '../_base_/models/cotap_vit.py',
    '../_base_/datasets/cotap_coco_in1k.py',
    '../_base_/schedules/cotap_adamw_cosine.py',
    '../_base_/default_runtime.py',
    '../_base_/dense_monitor/coco_stuff27_nn.py',
]

# student (and, by EMATeacherHook, teacher) initialised from the converted weights; non-strict: the
# filter's LayerNorms, the prototypes and the heads are new.
load_from = 'checkpoints/dino_vits16_cotap.pth'

# official: the prototype bank holds samples of the CLS-branch (ImageNet) images
model = dict(bank_sources=('imagenet', ))

coco_neighbors_file = 'data/coco/knn/train2017_dino_vitb16_k7.npz'
imagenet_neighbors_file = 'data/imagenet/knn/train_dino_vitb16_k7.npz'
train_dataloader = dict(
    batch_size=28,
    dataset=dict(
        coco=dict(neighbors_file=coco_neighbors_file),
        imagenet=dict(neighbors_file=imagenet_neighbors_file)))

optim_wrapper = dict(type='AmpOptimWrapper')  # fp16 (loss_scale 'dynamic' by default)
default_hooks = dict(checkpoint=dict(interval=10000, max_keep_ckpts=3))
auto_scale_lr = dict(base_batch_size=112, enable=False)  # 4 GPUs x 28
randomness = dict(seed=0, deterministic=False)
# dense/mIoU on COCO-Stuff-27 every 10k iterations, best 5 checkpoints kept
# (../_base_/dense_monitor/coco_stuff27_nn.py: data paths, how to point them elsewhere)
custom_hooks = [*_base_.custom_hooks, _base_.dense_monitor]

# CoTAP (https://arxiv.org/abs/2509.09429) post-pretraining of DINO ViT-S/16 on COCO train2017,
# official schedule: 4 GPUs x 28 images, 240k iterations, AdamW lr 3e-5 (heads 3e-4), cosine to 3e-6,
# weight decay cosine 0.024 -> 0.24, fp16.
# Init: checkpoints/dino_vits16_cotap.pth from
#   python tools/model_converters/vit2cotap.py dino_deitsmall16_pretrain.pth checkpoints/dino_vits16_cotap.pth
# Known differences to the official run: COCO only (no ImageNet branch), DINO CLS term instead of the
# Sinkhorn/queue CLS terms, no Leopart patch-clustering term, in-batch partner retrieval instead of
# precomputed k-NN neighbours (see cotap_mm/models/algorithms/cotap.py).
_base_ = [
    '../_base_/models/cotap_vit.py',
    '../_base_/datasets/cotap_coco.py',
    '../_base_/schedules/cotap_adamw_cosine.py',
    '../_base_/default_runtime.py',
]

# student (and, by EMATeacherHook, teacher) initialised from the converted DINO weights;
# non-strict: the filter's LayerNorms, the prototypes and the heads are new.
load_from = 'checkpoints/dino_vits16_cotap.pth'

optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic')  # fp16 on GPU
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(interval=10000, max_keep_ckpts=3))
auto_scale_lr = dict(base_batch_size=112, enable=False)
randomness = dict(seed=0, deterministic=False)

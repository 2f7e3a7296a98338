# CoTAP pretraining data as in the paper (official coco+in1k data config): every index gives one COCO
# train2017 image (index mod 118,287, for the patch losses) and one ImageNet-1k train image (for the
# CLS losses), each with a partner drawn uniformly from the first 7 columns of its precomputed
# neighbour row (as released: the image itself in column 0 + its 6 nearest neighbours, so about one
# pair in seven is the image with itself; exclude_self=True never draws it); the epoch is as long as
# ImageNet (1,281,167). Every image goes through the CoTAP multi-crop of cotap_coco.py.
# neighbor_collate flattens each item [coco_anchor, coco_neighbour, in_anchor, in_neighbour] into the
# batch: 4 x batch_size images per GPU, DataSample.neighbor_index / source ('coco' / 'imagenet') /
# is_neighbor set. Neighbour files (image paths relative to each data_root) are named
# data/<data set>/knn/<data_prefix>_<feature model>_k<K>.npz; every released config uses the one set
# of the official release, DINO ViT-B/16 features, k = 7:
#   python tools/misc/compute_neighbors.py configs/cotap/cotap_vit-base-p16-dino_8xb16-210k_coco-in1k.py \
#       --checkpoint checkpoints/dino_vitb16_cotap.pth --data-root data/coco --data-prefix train2017 \
#       -k 7 --out data/coco/knn/train2017_dino_vitb16_k7.npz
#   torchrun --nproc_per_node 8 tools/misc/compute_neighbors.py (same config and checkpoint) \
#       --data-root data/imagenet --data-prefix train -k 7 \
#       --out data/imagenet/knn/train_dino_vitb16_k7.npz --launcher pytorch
_base_ = ['./cotap_coco.py']

coco_neighbors_file = 'data/coco/knn/train2017_dino_vitb16_k7.npz'
imagenet_neighbors_file = 'data/imagenet/knn/train_dino_vitb16_k7.npz'
train_dataloader = dict(
    batch_size=28,  # index groups per GPU (ViT-S/16: 4 GPUs x 28 anchors per data set)
    collate_fn=dict(type='neighbor_collate'),
    dataset=dict(
        _delete_=True,
        type='MixedCOCOImageNet',
        coco=dict(
            type='COCOUnlabeled',
            data_root='data/coco',
            data_prefix='train2017',
            neighbors_file=coco_neighbors_file,
            num_neighbors=7,  # released: columns 0-6
            exclude_self=False,  # released: the image itself (column 0) can be drawn
            pipeline={{_base_.train_pipeline}}),
        imagenet=dict(
            type='ImageNetUnlabeled',
            data_root='data/imagenet',
            data_prefix='train',
            neighbors_file=imagenet_neighbors_file,
            num_neighbors=7,
            exclude_self=False,
            pipeline={{_base_.train_pipeline}})))

# CoTAP pretraining data, COCO only, with precomputed nearest neighbours: every index gives a COCO
# train2017 image and a partner drawn uniformly from the first 7 columns of its neighbour row (as
# released: the image itself in column 0 + its 6 nearest neighbours, so about one pair in seven is the
# image with itself; exclude_self=True never draws it), each through the CoTAP multi-crop of
# cotap_coco.py; neighbor_collate flattens [anchor, neighbour] pairs into the batch
# (2 x batch_size images, DataSample.neighbor_index / source / is_neighbor set).
# The neighbour file (image paths relative to data_root) is named
# data/<data set>/knn/<data_prefix>_<feature model>_k<K>.npz; the released configs use the official
# release's DINO ViT-B/16 features, k = 7:
#   python tools/misc/compute_neighbors.py configs/cotap/cotap_vit-base-p16-dino_8xb16-210k_coco-in1k.py \
#       --checkpoint checkpoints/dino_vitb16_cotap.pth --data-root data/coco --data-prefix train2017 \
#       -k 7 --out data/coco/knn/train2017_dino_vitb16_k7.npz
_base_ = ['./cotap_coco.py']

coco_neighbors_file = 'data/coco/knn/train2017_dino_vitb16_k7.npz'
train_dataloader = dict(
    batch_size=28,  # anchors per GPU (ViT-S/16: 4 GPUs x 28)
    collate_fn=dict(type='neighbor_collate'),
    dataset=dict(
        _delete_=True,
        type='COCOUnlabeled',
        data_root='data/coco',
        data_prefix='train2017',
        neighbors_file=coco_neighbors_file,
        num_neighbors=7,  # released: columns 0-6
        exclude_self=False,  # released: the image itself (column 0) can be drawn
        pipeline={{_base_.train_pipeline}}))

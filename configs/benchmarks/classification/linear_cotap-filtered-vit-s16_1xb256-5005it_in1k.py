# ImageNet-1k linear classification of CoTAP ViT-S/16 with the paper's features: the 2C = 768-dim CLS
# token of the object-aware filter (last block || filtered last block, LayerNorm(2C)), computed by
# mmpretrain.CoTAPFilteredCLSViT (ViT + filter, frozen). CoTAP README (the release's own evaluation):
# DINO ViT-S/16 77.0 -> 79.1, iBOT 77.9 -> 79.4, Mugs 78.9 -> 79.4, Leopart 70.0 -> 78.6.
# Weights: a CoTAP training checkpoint (prefix='' = student, 'teacher.' = EMA teacher) or one
# published with publish_model.py --with-neck; it must hold the filter (neck.*) with
# k-means-initialised prototypes.
_base_ = ['./linear_cotap-vit-s16_1xb256-5005it_in1k.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='CoTAPFilteredCLSViT',
        arch='dino-s',
        img_size=224,
        patch_size=16,
        num_prototypes=64,
        kernel_size=3,
        frozen=True,
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/cotap_vit-s16.pth', prefix='')),
    head=dict(in_channels=768))

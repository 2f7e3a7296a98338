# Pascal VOC 2012 frozen linear probe of CoTAP ViT-S/16 with the paper's features:
# the 2C = 768-dim patch tokens of the object-aware filter (last block || filtered last block,
# LayerNorm(2C)), i.e. CoTAP.extract_feat, computed by mmpretrain.CoTAPFilteredViT (ViT + filter,
# frozen). Everything else (data, crops, 1x1-conv head, Adam 3e-3, batch 128, 100k samples) is the
# plain-token probe this config inherits from.
#
# Weights: a CoTAP training checkpoint (prefix='' = student, prefix='teacher.' = EMA teacher) or one
# published with `tools/model_converters/publish_model.py --with-neck` (prefix=''). The checkpoint
# must hold the filter (neck.*) with k-means-initialised prototypes.
_base_ = ['./linear_cotap-vit-s16_1xb128-782it_voc12aug-336x336.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmpretrain.CoTAPFilteredViT',
        arch='dino-s',
        img_size=224,
        patch_size=16,
        num_prototypes=64,
        kernel_size=3,
        frozen=True,
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/cotap_vit-s16.pth', prefix='')),
    decode_head=dict(in_channels=768, channels=768))  # 2C; num_convs=0 needs channels == in_channels

# ADE20K (150 classes) UperNet fine-tuning of CoTAP ViT-B/16, 8 GPUs x 2 images, 160k iterations
# (mmseg's mae-base_upernet_8xb2-amp-160k_ade20k-512x512 recipe; add --amp for mixed precision).
_base_ = ['./upernet_cotap-vit-s16_8xb2-160k_ade20k-512x512.py']
model = dict(
    backbone=dict(
        arch='dino-b',
        init_cfg=dict(checkpoint='pretrain/cotap_vit-b16.pth')),
    neck=dict(embed_dim=768),
    decode_head=dict(in_channels=[768, 768, 768, 768], channels=768),
    auxiliary_head=dict(in_channels=768))

# COCO-Stuff-27 frozen linear probe of CoTAP ViT-B/8 (README: DINO 45.9 -> 54.7).
_base_ = ['./linear_cotap-vit-s16_1xb256-391it_coco-stuff27-336x336.py']
model = dict(
    backbone=dict(
        arch='dino-b', patch_size=8, init_cfg=dict(checkpoint='pretrain/cotap_vit-b8.pth')),
    decode_head=dict(in_channels=768, channels=768))

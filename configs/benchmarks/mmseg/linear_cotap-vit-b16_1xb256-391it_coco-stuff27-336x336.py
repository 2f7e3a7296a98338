# COCO-Stuff-27 frozen linear probe of CoTAP ViT-B/16 (README: DINO 44.0 -> 52.2, iBOT 49.6 -> 53.9).
_base_ = ['./linear_cotap-vit-s16_1xb256-391it_coco-stuff27-336x336.py']
model = dict(
    backbone=dict(arch='dino-b', init_cfg=dict(checkpoint='pretrain/cotap_vit-b16.pth')),
    decode_head=dict(in_channels=768, channels=768))

# ImageNet-1k linear classification of a CoTAP ViT-B/16: frozen last-layer CLS token (C = 768).
# CoTAP README (the release's own linear evaluation): DINO ViT-B/16 78.2 -> 80.2 with CoTAP.
_base_ = ['./linear_cotap-vit-s16_1xb256-5005it_in1k.py']

model = dict(
    backbone=dict(arch='dino-b', init_cfg=dict(checkpoint='pretrain/cotap_vit-b16.pth')),
    head=dict(in_channels=768))

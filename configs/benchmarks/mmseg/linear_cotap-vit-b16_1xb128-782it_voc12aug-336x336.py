# Pascal VOC 2012 trainaug -> val frozen linear probe of CoTAP ViT-B/16.
_base_ = ['./linear_cotap-vit-s16_1xb128-782it_voc12aug-336x336.py']
model = dict(
    backbone=dict(arch='dino-b', init_cfg=dict(checkpoint='pretrain/cotap_vit-b16.pth')),
    decode_head=dict(in_channels=768, channels=768))

# Documented entry point: CoTAP post-pretraining of DINO ViT-S/16 on COCO train2017.
_base_ = ['./cotap/cotap_vit-small-p16_4xb28-240k_coco.py']

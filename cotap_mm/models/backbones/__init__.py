from .cotap_vit import CoTAPViT

__all__ = ['CoTAPViT']

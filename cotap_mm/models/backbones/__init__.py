from .cotap_filtered_vit import CoTAPFilteredViT
from .cotap_vit import CoTAPViT

__all__ = ['CoTAPFilteredViT', 'CoTAPViT']

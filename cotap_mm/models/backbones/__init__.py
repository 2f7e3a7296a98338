from .cotap_filtered_vit import CoTAPFilteredCLSViT, CoTAPFilteredViT
from .cotap_vit import CoTAPViT

__all__ = ['CoTAPFilteredViT', 'CoTAPFilteredCLSViT', 'CoTAPViT']

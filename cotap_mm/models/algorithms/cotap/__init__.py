from .cotap import CoTAP
from .term_ddssl import kept_code_cross_entropy, region_code_targets

__all__ = ['CoTAP', 'kept_code_cross_entropy', 'region_code_targets']

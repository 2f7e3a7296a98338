from .cotap import CoTAP

__all__ = ['CoTAP']

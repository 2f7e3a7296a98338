from .cotap import CoTAP
from .ddssl_ibot import DDSSLiBOT
from .dino import DINO
from .scfs import SCFS

__all__ = ['CoTAP', 'SCFS', 'DDSSLiBOT', 'DINO']

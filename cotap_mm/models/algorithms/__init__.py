from .cotap import CoTAP
from .ddssl_ibot import DDSSLiBOT
from .scfs import SCFS

__all__ = ['CoTAP', 'SCFS', 'DDSSLiBOT']

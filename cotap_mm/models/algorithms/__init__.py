from .cotap import CoTAP
from .scfs import SCFS

__all__ = ['CoTAP', 'SCFS']

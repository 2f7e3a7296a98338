from .base import TeacherStudentSelfSupervisor
from .cotap import CoTAP
from .ddssl_ibot import DDSSLiBOT
from .dino import DINO
from .scfs import SCFS

__all__ = ['TeacherStudentSelfSupervisor', 'CoTAP', 'SCFS', 'DDSSLiBOT', 'DINO']

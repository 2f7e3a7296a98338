from .formatting import PackGeometricViews
from .geometric_views import GeometricMultiView
from .photometric import HueSafeColorJitter, RandomGaussianBlur
from .region_cutout import RegionCollaborativeCutout

__all__ = ['PackGeometricViews', 'GeometricMultiView', 'HueSafeColorJitter', 'RandomGaussianBlur',
           'RegionCollaborativeCutout']

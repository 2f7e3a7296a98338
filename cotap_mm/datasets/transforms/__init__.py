from .formatting import PackGeometricViews
from .geometric_views import GeometricMultiView
from .photometric import HueSafeColorJitter, RandomGaussianBlur
from .region_cutout import RegionCollaborativeCutout
from .seg_probe import SegRandomResizedCrop, SetOriShapeToImgShape

__all__ = ['PackGeometricViews', 'GeometricMultiView', 'HueSafeColorJitter', 'RandomGaussianBlur',
           'RegionCollaborativeCutout', 'SegRandomResizedCrop', 'SetOriShapeToImgShape']

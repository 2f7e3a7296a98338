from .formatting import PackGeometricViews
from .geometric_views import GeometricMultiView
from .photometric import HueSafeColorJitter, RandomGaussianBlur

__all__ = ['PackGeometricViews', 'GeometricMultiView', 'HueSafeColorJitter', 'RandomGaussianBlur']

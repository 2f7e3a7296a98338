from .object_prototype_neck import ObjectPrototypeNeck
from .simple_fpn import SimpleFPN

__all__ = ['ObjectPrototypeNeck', 'SimpleFPN']

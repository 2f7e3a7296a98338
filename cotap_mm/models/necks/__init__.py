from .object_prototype_neck import ObjectPrototypeNeck

__all__ = ['ObjectPrototypeNeck']

from .continuous_ap_loss import ContinuousAPLoss
from .prototype_entropy_loss import PrototypeEntropyLoss

__all__ = ['ContinuousAPLoss', 'PrototypeEntropyLoss']

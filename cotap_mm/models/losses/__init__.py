from .continuous_ap_loss import ContinuousAPLoss
from .dino_cls_loss import DINOClsLoss
from .ibot_patch_loss import IBOTPatchLoss
from .prototype_entropy_loss import PrototypeEntropyLoss

__all__ = ['ContinuousAPLoss', 'DINOClsLoss', 'PrototypeEntropyLoss', 'IBOTPatchLoss']

from .cls_cluster_loss import ClsClusterLoss
from .cls_neighbor_loss import ClsNeighborLoss
from .continuous_ap_loss import ContinuousAPLoss
from .dino_cls_loss import DINOClsLoss
from .ibot_patch_loss import IBOTPatchLoss
from .patch_cluster_loss import PatchClusterLoss
from .prototype_entropy_loss import PrototypeEntropyLoss

__all__ = [
    'ContinuousAPLoss', 'DINOClsLoss', 'PrototypeEntropyLoss', 'IBOTPatchLoss', 'ClsClusterLoss',
    'ClsNeighborLoss', 'PatchClusterLoss'
]

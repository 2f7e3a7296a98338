"""Pure loss functions (no registry, no modules)."""
from .cluster_prediction import (cross_view_code_loss, neighbor_code_loss,
                                 pairwise_mean_cross_entropy, soft_cross_entropy)
from .continuous_ap import (CONTINUOUS_AP_IMPLS, anchor_weights, check_cotap_inputs,
                            continuous_ap_loss, continuous_ap_loss_chunked,
                            continuous_ap_loss_dense, huber_step, huber_step_grad)
from .crop_pairs import different_crop_pairs
from .sinkhorn import mean_code_entropy, sinkhorn_knopp
from .teacher_centering import teacher_collapse_stats, teacher_temperature, update_center_

__all__ = [
    'cross_view_code_loss', 'neighbor_code_loss', 'pairwise_mean_cross_entropy',
    'soft_cross_entropy', 'sinkhorn_knopp', 'mean_code_entropy',
    'CONTINUOUS_AP_IMPLS', 'anchor_weights', 'check_cotap_inputs', 'continuous_ap_loss',
    'continuous_ap_loss_chunked', 'continuous_ap_loss_dense', 'huber_step', 'huber_step_grad',
    'different_crop_pairs', 'teacher_collapse_stats', 'teacher_temperature', 'update_center_'
]

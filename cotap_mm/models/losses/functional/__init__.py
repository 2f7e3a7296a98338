"""Pure loss functions (no registry, no modules)."""
from .continuous_ap import (CONTINUOUS_AP_IMPLS, anchor_weights, check_cotap_inputs,
                            continuous_ap_loss, continuous_ap_loss_chunked,
                            continuous_ap_loss_dense, huber_step, huber_step_grad)

__all__ = [
    'CONTINUOUS_AP_IMPLS', 'anchor_weights', 'check_cotap_inputs', 'continuous_ap_loss',
    'continuous_ap_loss_chunked', 'continuous_ap_loss_dense', 'huber_step', 'huber_step_grad'
]

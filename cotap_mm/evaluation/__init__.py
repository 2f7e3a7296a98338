from .dispersion import dispersion_stats
from .linear_probe import dense_linear_probe

__all__ = ['dispersion_stats', 'dense_linear_probe']

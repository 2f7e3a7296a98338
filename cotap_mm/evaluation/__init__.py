from .dense_eval import dense_evaluation, synthetic_probe_data
from .dispersion import dispersion_stats
from .linear_probe import build_patch_feature_extractor, dense_linear_probe

__all__ = ['dense_evaluation', 'synthetic_probe_data', 'dispersion_stats',
           'build_patch_feature_extractor', 'dense_linear_probe']

from .dense_eval import dense_evaluation, feature_dispersion, synthetic_probe_data
from .dispersion import dispersion_stats
from .linear_probe import build_patch_feature_extractor, dense_linear_probe
from .nn_retrieval import build_memory_bank, nn_retrieval_eval
from .overclustering import kmeans, overclustering_eval

__all__ = ['dense_evaluation', 'feature_dispersion', 'synthetic_probe_data', 'dispersion_stats',
           'build_patch_feature_extractor', 'dense_linear_probe', 'kmeans', 'overclustering_eval',
           'build_memory_bank', 'nn_retrieval_eval']

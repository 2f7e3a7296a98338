"""Library code of the tools: training stages, frozen models of checkpoints, the dense protocols
on feature sets (C / 2C / the equal-width control), tables (``tools/demo.py``,
``tools/benchmarks/bench_dense_methods.py``, ``tools/analysis_tools/*``)."""
from .checkpoint_models import build_checkpoint_model, build_extractor, checkpoint_feature_sets
from .dense_comparison import (CLAIM_NOTE, SCENE_CLASSES, comparison_pairs, dense_row,
                               probe_checkpoint, protocol_arg_error,
                               score_checkpoint_rows, score_equal_width_control)
from .dense_scores import (PROTOCOLS, DenseProtocolSettings, score_cached_features,
                           score_extractor)
from .dense_tables import (aggregate_rows, checkpoint_scores_table, fmt_mean_std,
                           paired_differences, rows_table, write_section)
from .equal_width import equal_width_control, load_backbone_only, prototype_bank
from .measured_stage import STAGE_STATS, run_measured_stage
from .supervised_starts import presence_labels, tiny_vit, train_supervised
from .training_stages import rescale_param_schedulers, stage_checkpoint, train_stage

__all__ = [
    'build_checkpoint_model', 'build_extractor', 'checkpoint_feature_sets', 'SCENE_CLASSES',
    'CLAIM_NOTE', 'comparison_pairs', 'protocol_arg_error',
    'dense_row', 'probe_checkpoint', 'score_checkpoint_rows', 'score_equal_width_control',
    'PROTOCOLS', 'DenseProtocolSettings', 'score_cached_features', 'score_extractor',
    'aggregate_rows', 'checkpoint_scores_table', 'fmt_mean_std', 'paired_differences',
    'rows_table', 'write_section', 'equal_width_control', 'load_backbone_only', 'prototype_bank',
    'STAGE_STATS', 'run_measured_stage', 'presence_labels', 'tiny_vit', 'train_supervised',
    'rescale_param_schedulers', 'stage_checkpoint', 'train_stage'
]

from .ema_teacher_hook import EMATeacherHook
from .feature_visualization_hook import FeatureVisualizationHook
from .plain_checkpoint_hook import PlainCheckpointHook

__all__ = ['EMATeacherHook', 'FeatureVisualizationHook', 'PlainCheckpointHook']

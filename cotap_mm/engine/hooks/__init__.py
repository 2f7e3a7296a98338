from .collapse_monitor_hook import CollapseMonitorHook
from .ema_teacher_hook import EMATeacherHook
from .feature_visualization_hook import FeatureVisualizationHook
from .plain_checkpoint_hook import PlainCheckpointHook

__all__ = ['CollapseMonitorHook', 'EMATeacherHook', 'FeatureVisualizationHook', 'PlainCheckpointHook']

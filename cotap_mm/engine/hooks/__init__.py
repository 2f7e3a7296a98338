from .collapse_monitor_hook import CollapseMonitorHook
from .dense_monitor_hook import DenseMonitorHook
from .ema_teacher_hook import EMATeacherHook
from .feature_visualization_hook import FeatureVisualizationHook
from .plain_checkpoint_hook import PlainCheckpointHook

__all__ = ['CollapseMonitorHook', 'DenseMonitorHook', 'EMATeacherHook', 'FeatureVisualizationHook',
           'PlainCheckpointHook']

from .atomic_checkpoint_hook import AtomicCheckpointHook
from .collapse_monitor_hook import CollapseMonitorHook
from .dense_monitor_hook import DenseMonitorHook
from .divergence_hook import DivergenceHook
from .ema_teacher_hook import EMATeacherHook
from .feature_visualization_hook import FeatureVisualizationHook
from .plain_checkpoint_hook import PlainCheckpointHook
from .resume_hook import ResumeHook
from .start_weights_hook import StartWeightsHook

__all__ = ['AtomicCheckpointHook', 'CollapseMonitorHook', 'DenseMonitorHook', 'DivergenceHook',
           'EMATeacherHook', 'FeatureVisualizationHook', 'PlainCheckpointHook', 'ResumeHook',
           'StartWeightsHook']

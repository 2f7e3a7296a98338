from .ema_teacher_hook import EMATeacherHook
from .plain_checkpoint_hook import PlainCheckpointHook

__all__ = ['EMATeacherHook', 'PlainCheckpointHook']

"""EMA teacher update for student/teacher self-distillation (DINO-style cosine momentum)."""
import math
from typing import Optional

import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmpretrain.registry import HOOKS


def cosine_momentum(step: int, max_steps: int, start: float, end: float) -> float:
    """DINO's ``cosine_scheduler`` for the teacher momentum.

    ``m(t) = end - (end - start) * (cos(pi * t / T) + 1) / 2``: ``start`` at ``t = 0``, ``end`` at
    ``t = T``; ``t`` is clamped to ``[0, T]``.

    Args:
        step (int): Current step ``t`` (0-based).
        max_steps (int): Total number of steps ``T`` (> 0).
        start (float): Momentum at step 0, in [0, 1].
        end (float): Momentum at step ``T``, in [0, 1].

    Returns:
        float: The momentum ``m(t)``.
    """
    if not isinstance(max_steps, int) or max_steps <= 0:
        raise ValueError(f'max_steps must be a positive int, got {max_steps!r}')
    for name, val in (('start', start), ('end', end)):
        if not 0.0 <= val <= 1.0:
            raise ValueError(f'{name} momentum must be in [0, 1], got {val!r}')
    t = min(max(step, 0), max_steps)
    return end - (end - start) * (math.cos(math.pi * t / max_steps) + 1.0) / 2.0


@HOOKS.register_module()
class EMATeacherHook(Hook):
    """Schedule the EMA teacher's momentum and update the teacher after every optimiser step.

    The model (unwrapped from DDP) is a
    :class:`~cotap_mm.models.algorithms.base.TeacherStudentSelfSupervisor`: the hook calls its
    ``init_teacher()`` before training and ``update_teacher(m)`` after each optimiser step, with
    ``m`` following DINO's cosine schedule from ``momentum`` to ``end_momentum`` over the run
    (:func:`cosine_momentum` at ``t = runner.iter``, ``T = runner.max_iters``), logged as
    ``train/ema_momentum``. Iterations without an optimiser step (gradient accumulation,
    ``optim_wrapper.should_update()`` False) leave the teacher alone. Every rank applies the same
    update to identical students, so the teachers stay identical without a collective.

    Before training (after ``load_from`` / ``resume``): with ``init_teacher='auto'`` the student is
    copied into the teacher only when the model's ``teacher_initialized`` buffer is False (a fresh
    run, or a start checkpoint without a teacher); a loaded or resumed teacher is kept.
    ``'always'`` / ``'never'`` force the choice.

    Args:
        momentum (float): momentum at the start of training. Defaults to 0.9997.
        end_momentum (float): momentum at the end of training. Defaults to 0.9999.
        init_teacher (str): 'auto', 'always' or 'never'. Defaults to 'auto'.
        teacher_name, student_name, init_flag_name: accepted for configs written for earlier
            versions; only their old defaults ('teacher', 'student', 'teacher_initialized') are
            valid.
    """

    priority = 'NORMAL'
    _OLD_DEFAULTS = dict(teacher_name='teacher', student_name='student',
                         init_flag_name='teacher_initialized')

    def __init__(self,
                 momentum: float = 0.9997,
                 end_momentum: float = 0.9999,
                 init_teacher: str = 'auto',
                 **old_names: str) -> None:
        for name, val in (('momentum', momentum), ('end_momentum', end_momentum)):
            if not isinstance(val, (int, float)) or not 0.0 <= val <= 1.0:
                raise ValueError(f'{name} must be a float in [0, 1], got {val!r}')
        if init_teacher not in ('auto', 'always', 'never'):
            raise ValueError(f"init_teacher must be 'auto', 'always' or 'never', "
                             f'got {init_teacher!r}')
        for key, val in old_names.items():
            if self._OLD_DEFAULTS.get(key, object()) != val:
                raise TypeError(f'EMATeacherHook got {key}={val!r}: the hook now calls the '
                                "model's init_teacher() / update_teacher() (TeacherStudent"
                                'SelfSupervisor); accepted old arguments: '
                                f'{self._OLD_DEFAULTS}')
        self.momentum = float(momentum)
        self.end_momentum = float(end_momentum)
        self.init_teacher = init_teacher

    @staticmethod
    def _model(runner) -> nn.Module:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        for attr in ('init_teacher', 'update_teacher', 'teacher', 'teacher_initialized'):
            if not hasattr(model, attr):
                raise TypeError(f'EMATeacherHook needs a TeacherStudentSelfSupervisor (with '
                                f'init_teacher, update_teacher, teacher, teacher_initialized); '
                                f'{type(model).__name__} has no {attr!r}')
        return model

    def before_train(self, runner) -> None:
        model = self._model(runner)
        if any(p.requires_grad for p in model.teacher.parameters()):
            runner.logger.warning('EMATeacherHook: teacher parameters require grad; setting '
                                  'requires_grad=False (do it in the model __init__ for DDP).')
            model.teacher.requires_grad_(False)
        if self.init_teacher == 'auto':
            do_copy = not bool(model.teacher_initialized)
        else:
            do_copy = self.init_teacher == 'always'
        if do_copy:
            model.init_teacher()
            runner.logger.info('EMATeacherHook: teacher initialised from the student.')
        else:
            model.teacher_initialized.fill_(True)
            runner.logger.info('EMATeacherHook: keeping the loaded/resumed teacher '
                               f'(iter {runner.iter}).')

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch: Optional[dict] = None,
                         outputs: Optional[dict] = None) -> None:
        should_update = getattr(runner.optim_wrapper, 'should_update', None)
        if callable(should_update) and not should_update():
            return
        m = cosine_momentum(runner.iter, runner.max_iters, self.momentum, self.end_momentum)
        self._model(runner).update_teacher(m)
        runner.message_hub.update_scalar('train/ema_momentum', m)


__all__ = ['cosine_momentum', 'EMATeacherHook']

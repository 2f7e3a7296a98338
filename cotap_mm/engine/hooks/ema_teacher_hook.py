"""EMA teacher update for student/teacher self-distillation (DINO-style cosine momentum)."""
import math
from typing import Optional, Sequence, Tuple

import torch
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


def _paired(teacher: nn.Module, student: nn.Module, what: str) -> Sequence[Tuple[str, torch.Tensor,
                                                                                 torch.Tensor]]:
    get = (lambda m: dict(m.named_parameters())) if what == 'parameters' else (
        lambda m: dict(m.named_buffers()))
    t_items, s_items = get(teacher), get(student)
    if t_items.keys() != s_items.keys():
        missing = sorted(set(s_items) - set(t_items))[:5]
        extra = sorted(set(t_items) - set(s_items))[:5]
        raise ValueError(f'teacher and student must have the same {what}; teacher lacks '
                         f'{missing}, teacher has extra {extra}')
    pairs = []
    for name, t in t_items.items():
        s = s_items[name]
        if t.shape != s.shape:
            raise ValueError(f'teacher and student {what[:-1]} {name!r} differ in shape: '
                             f'{tuple(t.shape)} vs {tuple(s.shape)}')
        pairs.append((name, t, s))
    return pairs


def check_teacher_student(teacher: nn.Module, student: nn.Module) -> None:
    """Raise ``ValueError`` unless both modules have the same parameter and buffer names/shapes."""
    _paired(teacher, student, 'parameters')
    _paired(teacher, student, 'buffers')


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: ``teacher_p = momentum * teacher_p + (1 - momentum) * student_p``; buffers copied.

    Args:
        teacher (nn.Module): The EMA model, updated in place.
        student (nn.Module): The online model, same structure (parameter and buffer names).
        momentum (float): In [0, 1]; 1 keeps the teacher, 0 copies the student.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f'momentum must be in [0, 1], got {momentum!r}')
    for _, t, s in _paired(teacher, student, 'parameters'):
        if t.is_floating_point():
            t.mul_(momentum).add_(s.detach().to(t.dtype), alpha=1.0 - momentum)
        else:
            t.copy_(s)
    for _, t, s in _paired(teacher, student, 'buffers'):
        t.copy_(s)


@torch.no_grad()
def copy_student_to_teacher_(teacher: nn.Module, student: nn.Module) -> None:
    """In place: teacher parameters and buffers := student's (same structure required)."""
    for _, t, s in _paired(teacher, student, 'parameters'):
        t.copy_(s)
    for _, t, s in _paired(teacher, student, 'buffers'):
        t.copy_(s)


@HOOKS.register_module()
class EMATeacherHook(Hook):
    """Update an EMA teacher from the student after every optimiser step, DINO-style.

    Used by CoTAP (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_): the teacher is the
    exponential moving average of the student, ``teacher = m * teacher + (1 - m) * student`` for
    parameters (buffers are copied), with ``m`` following DINO's cosine schedule from
    ``momentum`` = 0.9997 (CoTAP's ``training.ema``) to ``end_momentum`` = 0.9999 over the run
    (:func:`cosine_momentum` at ``t = runner.iter``, ``T = runner.max_iters``). The current
    momentum is logged as ``train/ema_momentum``.

    The teacher and student are submodules of the (unwrapped) model named by ``teacher_name`` and
    ``student_name`` (dotted paths allowed) with identical parameter and buffer names. The hook
    keeps teacher parameters at ``requires_grad=False`` (the model should already do so in its
    ``__init__``, before DDP wraps it).

    Initialisation (``before_train``, which mmengine runs after ``load_from`` / ``resume``): the
    teacher state is part of the model's ``state_dict``, so a resumed or loaded teacher must not
    be overwritten. With ``init_teacher='auto'``: if the model has a buffer named
    ``init_flag_name`` (e.g. ``self.register_buffer('teacher_initialized',
    torch.tensor(False))``), the student is copied into the teacher only when the flag is False,
    and the flag is then set (it is saved with the checkpoint, so this also covers ``load_from``
    of a trained model); without such a buffer, the student is copied only when
    ``runner.iter == 0`` (a fresh run; a resumed run starts at the saved iteration).
    ``'always'`` / ``'never'`` force the choice.

    Distributed training: each rank applies the same update to identical student weights (DDP
    keeps them in sync), so the teachers stay identical without any collective.

    Gradient accumulation: when the optimiser wrapper reports (``should_update()``) that no
    optimiser step happened this iteration, the teacher is not updated.

    Args:
        momentum (float): Momentum at the start of training. Defaults to 0.9997.
        end_momentum (float): Momentum at the end of training. Defaults to 0.9999.
        teacher_name (str): Attribute path of the teacher in the model. Defaults to 'teacher'.
        student_name (str): Attribute path of the student in the model. Defaults to 'student'.
        init_teacher (str): 'auto', 'always' or 'never'. Defaults to 'auto'.
        init_flag_name (str | None): Name of an optional bool buffer of the model that records
            whether the teacher was initialised. Defaults to 'teacher_initialized'.
    """

    priority = 'NORMAL'

    def __init__(self,
                 momentum: float = 0.9997,
                 end_momentum: float = 0.9999,
                 teacher_name: str = 'teacher',
                 student_name: str = 'student',
                 init_teacher: str = 'auto',
                 init_flag_name: Optional[str] = 'teacher_initialized') -> None:
        for name, val in (('momentum', momentum), ('end_momentum', end_momentum)):
            if not isinstance(val, (int, float)) or not 0.0 <= val <= 1.0:
                raise ValueError(f'{name} must be a float in [0, 1], got {val!r}')
        if init_teacher not in ('auto', 'always', 'never'):
            raise ValueError(f"init_teacher must be 'auto', 'always' or 'never', "
                             f'got {init_teacher!r}')
        self.momentum = float(momentum)
        self.end_momentum = float(end_momentum)
        self.teacher_name = teacher_name
        self.student_name = student_name
        self.init_teacher = init_teacher
        self.init_flag_name = init_flag_name

    def _modules(self, runner) -> Tuple[nn.Module, nn.Module, nn.Module]:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        mods = []
        for name in (self.teacher_name, self.student_name):
            try:
                mod = model.get_submodule(name)
            except AttributeError as e:
                raise AttributeError(f'EMATeacherHook: the model {type(model).__name__} has no '
                                     f'submodule {name!r}') from e
            mods.append(mod)
        return model, mods[0], mods[1]

    def _flag(self, model: nn.Module) -> Optional[torch.Tensor]:
        if not self.init_flag_name:
            return None
        flag = getattr(model, self.init_flag_name, None)
        return flag if isinstance(flag, torch.Tensor) else None

    def before_train(self, runner) -> None:
        model, teacher, student = self._modules(runner)
        check_teacher_student(teacher, student)
        if any(p.requires_grad for p in teacher.parameters()):
            runner.logger.warning('EMATeacherHook: teacher parameters require grad; setting '
                                  'requires_grad=False (do it in the model __init__ for DDP).')
            teacher.requires_grad_(False)
        flag = self._flag(model)
        if self.init_teacher == 'always':
            do_copy = True
        elif self.init_teacher == 'never':
            do_copy = False
        elif flag is not None:
            do_copy = not bool(flag.item())
        else:
            do_copy = runner.iter == 0
        if do_copy:
            copy_student_to_teacher_(teacher, student)
            runner.logger.info('EMATeacherHook: teacher initialised from the student.')
        else:
            runner.logger.info('EMATeacherHook: keeping the loaded/resumed teacher '
                               f'(iter {runner.iter}).')
        if flag is not None:
            flag.fill_(True)

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch: Optional[dict] = None,
                         outputs: Optional[dict] = None) -> None:
        should_update = getattr(runner.optim_wrapper, 'should_update', None)
        if callable(should_update) and not should_update():
            return
        _, teacher, student = self._modules(runner)
        m = cosine_momentum(runner.iter, runner.max_iters, self.momentum, self.end_momentum)
        ema_update_(teacher, student, m)
        runner.message_hub.update_scalar('train/ema_momentum', m)


__all__ = [
    'cosine_momentum', 'ema_update_', 'copy_student_to_teacher_', 'check_teacher_student',
    'EMATeacherHook'
]

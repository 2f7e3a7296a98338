"""The student / EMA-teacher self-supervisor that DINO, SCFS, DDSSLiBOT and CoTAP build on."""
import copy
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmpretrain.models.selfsup.base import BaseSelfSupervisor

from cotap_mm.utils.config_checks import check_loss_weights
from ..utils.host_state import HostMirrorMixin

__all__ = ['TeacherStudentSelfSupervisor', 'first_view', 'paired_tensors', 'ema_update_']


def first_view(inputs: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
    """The image batch of ``extract_feat``'s input: the tensor itself or a list's first element."""
    return inputs[0] if isinstance(inputs, (list, tuple)) else inputs


def paired_tensors(teacher: nn.Module, student: nn.Module) -> Tuple[List[torch.Tensor], ...]:
    """Teacher parameters, student parameters, teacher buffers, student buffers, in matching order.

    Raises:
        ValueError: the two modules differ in parameter / buffer names or shapes.
    """
    out: List[List[torch.Tensor]] = []
    for what in ('parameters', 'buffers'):
        t_items = dict(getattr(teacher, f'named_{what}')())
        s_items = dict(getattr(student, f'named_{what}')())
        if t_items.keys() != s_items.keys():
            raise ValueError(f'teacher and student must have the same {what}; teacher lacks '
                             f'{sorted(set(s_items) - set(t_items))[:5]}, has extra '
                             f'{sorted(set(t_items) - set(s_items))[:5]}')
        for name, t in t_items.items():
            if t.shape != s_items[name].shape:
                raise ValueError(f'teacher and student {what[:-1]} {name!r} differ in shape: '
                                 f'{tuple(t.shape)} vs {tuple(s_items[name].shape)}')
        out += [list(t_items.values()), [s_items[k] for k in t_items]]
    return tuple(out)


@torch.no_grad()
def ema_update_(t_params: Sequence[torch.Tensor], s_params: Sequence[torch.Tensor],
                t_buffers: Sequence[torch.Tensor], s_buffers: Sequence[torch.Tensor],
                momentum: float) -> None:
    """In place: ``t = momentum * t + (1 - momentum) * s`` for the parameters; buffers copied.

    Args:
        t_params, s_params: teacher / student parameters in matching order.
        t_buffers, s_buffers: teacher / student buffers in matching order.
        momentum (float): in [0, 1]; 1 keeps the teacher, 0 copies the student.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f'momentum must be in [0, 1], got {momentum!r}')
    for t, s in zip(t_params, s_params):
        t.mul_(momentum).add_(s.detach().to(t.dtype), alpha=1.0 - momentum)
    for t, s in zip(t_buffers, s_buffers):
        t.copy_(s)


class TeacherStudentSelfSupervisor(HostMirrorMixin, BaseSelfSupervisor):
    """A self-supervisor with a student and a frozen EMA teacher of the same structure.

    The student modules stay direct submodules (checkpoint keys ``backbone.*``, ``head.*``, ...);
    :meth:`build_teacher` deep-copies the ones named in ``student_keys`` into ``teacher`` (an
    ``nn.ModuleDict``, ``teacher.backbone.*``, ...). :attr:`student` is an unregistered
    ``ModuleDict`` view with the same keys. The bool buffer ``teacher_initialized`` records whether
    :meth:`init_teacher` copied the trained student (saved with checkpoints, so a loaded or resumed
    teacher is kept). :class:`EMATeacherHook` calls :meth:`init_teacher` before training and
    :meth:`update_teacher` after every optimiser step.

    Subclasses build their student modules and losses, then call :meth:`build_teacher`.
    """

    def build_teacher(self, student_keys: Sequence[str]) -> None:
        """Deep-copy the student modules ``student_keys`` into the frozen ``teacher``.

        Raises:
            ValueError: a loss of the algorithm has a negative ``loss_weight`` (checked here, once
                every loss exists, so a config mistake fails at build time).
        """
        check_loss_weights(self)
        self._student_keys = tuple(student_keys)
        self.teacher = nn.ModuleDict({k: copy.deepcopy(getattr(self, k))
                                      for k in self._student_keys})
        self.teacher.requires_grad_(False)
        self.register_buffer('teacher_initialized', torch.tensor(False))
        self._ema_pairs: Optional[Tuple[List[torch.Tensor], ...]] = None

    def register_step_counter(self, name: str) -> None:
        """A step counter: the long buffer ``name`` (saved in checkpoints) with a host copy, so
        per-step decisions (warm-ups, frozen layers) read it without a device sync."""
        self.register_mirrored_buffer(name, 0)

    def step_count(self, name: str) -> int:
        """The host copy of the counter ``name``."""
        return self.host_value(name)

    def count_step(self, name: str) -> None:
        """Add 1 to the counter ``name``."""
        self.set_host_value(name, self.host_value(name) + 1)

    @property
    def student(self) -> nn.ModuleDict:
        """Unregistered ``ModuleDict`` view of the student modules (same keys as ``teacher``)."""
        return nn.ModuleDict({k: getattr(self, k) for k in self._student_keys})

    def _pairs(self) -> Tuple[List[torch.Tensor], ...]:
        """Teacher / student parameters and buffers (:func:`paired_tensors`), checked once and
        cached; rebuilt when a tensor was replaced (``model.to(device)`` replaces the buffers)."""
        mods = [getattr(self, k) for k in self._student_keys]
        now = (list(self.teacher.parameters()), [p for m in mods for p in m.parameters()],
               list(self.teacher.buffers()), [b for m in mods for b in m.buffers()])
        pairs = self._ema_pairs
        if pairs is None or any(len(a) != len(b) or any(x is not y for x, y in zip(a, b))
                                for a, b in zip(pairs, now)):
            pairs = self._ema_pairs = paired_tensors(self.teacher, self.student)
        return pairs

    @torch.no_grad()
    def init_teacher(self) -> None:
        """Copy the student's parameters and buffers into the teacher and set
        ``teacher_initialized``."""
        t_par, s_par, t_buf, s_buf = self._pairs()
        for t, s in zip(t_par + t_buf, s_par + s_buf):
            t.copy_(s)
        self.teacher_initialized.fill_(True)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``teacher = momentum * teacher + (1 - momentum) * student`` for the parameters; the
        buffers are copied.

        Args:
            momentum (float): in [0, 1]; 1 keeps the teacher, 0 copies the student.
        """
        ema_update_(*self._pairs(), momentum)

    def init_weights(self) -> None:
        """Initialise the student (``init_cfg``), then copy it into the teacher (the flag stays
        as it is: the hook decides whether a loaded teacher is kept)."""
        super().init_weights()
        flag = bool(self.teacher_initialized)
        self.init_teacher()
        self.teacher_initialized.fill_(flag)


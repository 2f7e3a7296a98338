"""The student / EMA-teacher structure shared by CoTAP, SCFS and DDSSLiBOT.

The student modules are direct submodules of the algorithm (checkpoints keep mmpretrain's
``backbone.*`` keys); ``teacher`` is an ``nn.ModuleDict`` of deep copies with
``requires_grad=False``; :attr:`TeacherStudentMixin.student` is an unregistered ``ModuleDict`` view
of the student modules; the bool buffer ``teacher_initialized`` tells
:class:`~cotap_mm.engine.hooks.ema_teacher_hook.EMATeacherHook` whether the teacher was already
copied from the student.
"""
import copy
from typing import Sequence, Tuple

import torch
import torch.nn as nn

from cotap_mm.utils.config_checks import check_loss_weights

__all__ = ['TeacherStudentMixin']


class TeacherStudentMixin:
    """Mixin (before ``BaseSelfSupervisor`` in the bases) for algorithms with an EMA teacher.

    Call :meth:`_init_teacher` at the end of ``__init__``, once the student modules and the
    losses exist: it also refuses negative loss weights, so a config mistake fails at build.
    """

    _student_keys: Tuple[str, ...] = ()

    def _init_teacher(self, student_keys: Sequence[str]) -> None:
        """Deep-copy the student modules ``student_keys`` into ``self.teacher`` (frozen) and
        register the bool buffer ``teacher_initialized`` (False).

        Raises:
            ValueError: a loss of the algorithm has a negative ``loss_weight``.
        """
        check_loss_weights(self)
        self._student_keys = tuple(student_keys)
        self.teacher = nn.ModuleDict({k: copy.deepcopy(getattr(self, k))
                                      for k in self._student_keys})
        self.teacher.requires_grad_(False)
        self.register_buffer('teacher_initialized', torch.tensor(False))

    @property
    def student(self) -> nn.ModuleDict:
        """Unregistered ``ModuleDict`` view of the student modules (same keys as ``teacher``)."""
        return nn.ModuleDict({k: getattr(self, k) for k in self._student_keys})

    def init_weights(self) -> None:
        """Initialise the student (``init_cfg``), then copy it into the teacher."""
        super().init_weights()
        with torch.no_grad():
            for k in self._student_keys:
                self.teacher[k].load_state_dict(getattr(self, k).state_dict())

"""Stop a diverged run with a useful error, optionally tolerating a few skipped steps."""
import logging
from typing import Callable, Dict, List, Optional, Tuple

import torch
from mmengine.dist import all_reduce, get_world_size
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapper, OptimWrapperDict
from mmpretrain.registry import HOOKS

from cotap_mm.utils.config_checks import check_loss_weights
from cotap_mm.utils.divergence import DivergenceError, describe_divergence, nonfinite_terms
from .atomic_checkpoint_hook import unwrap


def grad_norm(params: List[torch.Tensor]) -> torch.Tensor:
    """The total L2 norm of the gradients of ``params`` (0 when none has a gradient)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


class StepGuard:
    """Wraps ``optim_wrapper.update_params``: a step whose loss or gradient norm is NaN / inf is
    not applied (gradients are discarded), and the guard remembers it.

    The decision takes one host sync per optimizer step: the flag ``isfinite(loss) &
    isfinite(grad norm)`` (the norm before any clipping; MMEngine's ``clip_grad`` syncs its own
    norm for the log as before). Mixed precision
    (``AmpOptimWrapper`` and other subclasses with their own ``step``) is left alone: its loss
    scaler already skips steps with non-finite gradients; only the logged losses are checked then.
    """

    def __init__(self, optim_wrapper: OptimWrapper) -> None:
        self.ow = optim_wrapper
        self.skipped_now = False
        self.last_norm: Optional[float] = None
        optim_wrapper.update_params = self.update_params  # instance attribute: this wrapper only

    @staticmethod
    def can_guard(optim_wrapper: OptimWrapper) -> bool:
        cls = type(optim_wrapper)
        return cls.step is OptimWrapper.step and cls.update_params is OptimWrapper.update_params

    def _params(self) -> List[torch.Tensor]:
        return [p for g in self.ow.optimizer.param_groups for p in g['params']]

    def update_params(self, loss: torch.Tensor, step_kwargs: Optional[Dict] = None,
                      zero_kwargs: Optional[Dict] = None) -> None:
        ow = self.ow
        step_kwargs, zero_kwargs = step_kwargs or {}, zero_kwargs or {}
        ow.backward(ow.scale_loss(loss))
        if not ow.should_update():
            return
        norm = grad_norm(self._params())  # before clipping, which would scale inf to 0
        ok = torch.isfinite(loss.detach()).all() & torch.isfinite(norm)
        if get_world_size() > 1:  # a loss with no gradient path may be NaN on one rank only
            flag = ok.to(torch.int32)
            all_reduce(flag, op='min')
            ok = flag.bool()
        ok = bool(ok)  # the one host sync of the step
        self.skipped_now = not ok
        self.last_norm = float(norm) if not ok else None
        if ok:
            ow.step(**step_kwargs)  # clipping + optimizer step, as MMEngine does it
        ow.zero_grad(**zero_kwargs)

    def restore(self) -> None:
        """Back to the class's ``update_params``."""
        if self.ow.__dict__.get('update_params') == self.update_params:
            del self.ow.update_params


@HOOKS.register_module()
class DivergenceHook(Hook):
    """Non-finite loss or gradient norm: stop with an error naming the iteration, the non-finite
    terms and the last good checkpoint, for any algorithm.

    Every optimizer step is guarded (:class:`StepGuard`): with NaN / inf in the loss or the
    gradients the step is not applied. ``max_skipped_steps`` such steps are tolerated, each with
    a warning in the log; the next one raises :class:`~cotap_mm.utils.divergence.DivergenceError`.
    A tolerated step leaves no trace: the model's buffers (teacher centres, feature queues,
    prototype banks, counters), which the forward pass updates, are copied before each step while
    tolerance is left and restored after a skipped one (a copy per step: the price of
    ``max_skipped_steps > 0``).
    The logged loss terms are checked too: they are the values MMEngine already copied to the host
    for the log, so that check costs nothing. Runs before the checkpoint hook, which in addition
    never saves a model holding NaN / inf (:class:`~cotap_mm.engine.hooks.AtomicCheckpointHook`).
    The model's loss weights are checked when training starts (a negative weight is refused).

    Args:
        max_skipped_steps (int): non-finite steps skipped (not applied) before the run stops.
            Defaults to 0: the first one stops it.
    """

    priority = 'HIGH'

    def __init__(self, max_skipped_steps: int = 0) -> None:
        if isinstance(max_skipped_steps, bool) or not isinstance(max_skipped_steps, int) \
                or max_skipped_steps < 0:
            raise ValueError(f'max_skipped_steps must be an int >= 0, got {max_skipped_steps!r}')
        self.max_skipped_steps = max_skipped_steps
        self.skipped = 0
        self.guards: List[StepGuard] = []
        self._restore_train_step: Optional[Callable[[], None]] = None
        self._buffers: Dict[str, torch.Tensor] = {}

    def before_run(self, runner) -> None:
        check_loss_weights(unwrap(runner.model))

    def before_train(self, runner) -> None:
        self.skipped = int(runner.message_hub.get_info('divergence_skipped_steps', 0) or 0)
        ows = (list(runner.optim_wrapper.values())
               if isinstance(runner.optim_wrapper, OptimWrapperDict) else [runner.optim_wrapper])
        for ow in ows:
            if StepGuard.can_guard(ow):
                self.guards.append(StepGuard(ow))
            else:
                runner.logger.info(f'DivergenceHook: {type(ow).__name__} steps are not guarded '
                                   '(its loss scaler skips non-finite gradients); logged losses '
                                   'are checked')
        self._wrap_train_step(runner)

    def _wrap_train_step(self, runner) -> None:
        """Any error escaping a training step gets a note: the iteration and the last good
        checkpoint (e.g. a loss refusing NaN features)."""
        model = runner.model
        original = model.train_step

        def train_step(*args, **kwargs):
            try:
                return original(*args, **kwargs)
            except Exception as e:
                last = runner.message_hub.get_info('last_ckpt')
                e.add_note(f'raised in training iteration {runner.iter + 1}; last good '
                           f'checkpoint: {last or "none saved yet"}')
                raise

        model.train_step = train_step
        self._restore_train_step = lambda: delattr(model, 'train_step')

    def after_train(self, runner) -> None:
        for g in self.guards:
            g.restore()
        self.guards = []
        restore, self._restore_train_step = self._restore_train_step, None
        if restore is not None:
            restore()

    def _bad_terms(self, runner, outputs: Optional[dict]) -> List[Tuple[str, float]]:
        values = {}
        scalars = runner.message_hub.log_scalars
        for key in (outputs or {}):
            if 'loss' in key and f'train/{key}' in scalars:
                values[key] = scalars[f'train/{key}'].current()
        bad = nonfinite_terms(values)
        for g in self.guards:
            if g.skipped_now:
                bad.append(('grad_norm', g.last_norm))
        return bad

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self.max_skipped_steps > 0 and self.skipped < self.max_skipped_steps:
            self._buffers = {k: b.detach().clone()
                             for k, b in unwrap(runner.model).named_buffers()}

    def _restore_buffers(self, runner) -> None:
        """Undo what the skipped step's forward wrote into buffers (centres, queues, banks,
        counters), so a skipped step leaves no trace in the model."""
        saved, self._buffers = self._buffers, {}
        with torch.no_grad():
            for k, b in unwrap(runner.model).named_buffers():
                if k in saved and saved[k].shape == b.shape:
                    b.copy_(saved[k])

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        bad = self._bad_terms(runner, outputs)
        skipped = any(g.skipped_now for g in self.guards)
        for g in self.guards:
            g.skipped_now = False
        if not bad:
            return
        iteration = runner.iter + 1
        last = runner.message_hub.get_info('last_ckpt')
        if not skipped or self.skipped >= self.max_skipped_steps:
            raise DivergenceError(describe_divergence(iteration, bad, last)
                                  + (f' ({self.skipped} earlier non-finite step(s) skipped)'
                                     if self.skipped else ''))
        self._restore_buffers(runner)
        self.skipped += 1
        runner.message_hub.update_info('divergence_skipped_steps', self.skipped)
        shown = ', '.join(f'{k}={v}' for k, v in bad)
        runner.logger.log(logging.WARNING,
                          f'iteration {iteration}: non-finite {shown}; step not applied '
                          f'({self.skipped} of max_skipped_steps={self.max_skipped_steps})')


__all__ = ['DivergenceHook', 'StepGuard', 'grad_norm']

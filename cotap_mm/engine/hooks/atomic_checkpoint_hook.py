"""MMEngine's ``CheckpointHook`` with crash-safe writes, the RNG state, and no non-finite saves."""
import inspect
import os
import os.path as osp
from typing import List, Optional

from mmengine.dist import all_gather_object, get_world_size, is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.model import is_model_wrapper
from mmpretrain.registry import HOOKS

from cotap_mm.utils.atomic_io import atomic_write_text, commit, is_temporary, temporary_path
from cotap_mm.utils.config_checks import check_known_keys
from cotap_mm.utils.divergence import DivergenceError, nonfinite_tensors
from cotap_mm.utils.rng_state import capture_rng_state

_MMENGINE_KEYS = [k for k in inspect.signature(CheckpointHook.__init__).parameters
                  if k not in ('self', 'kwargs')]


def unwrap(model):
    """The model inside a DDP / FSDP wrapper."""
    return model.module if is_model_wrapper(model) else model


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` whose checkpoints survive a crash at any moment.

    * Each checkpoint is written to ``.<name>.tmp-<pid>`` in the same folder, fsynced and renamed
      (:mod:`cotap_mm.utils.atomic_io`); ``last_checkpoint`` likewise. A kill mid-write leaves the
      previous checkpoints and ``last_checkpoint`` as they were, plus a temporary file that resume
      ignores and the next run removes (logged) when training starts.
    * Checkpoints beyond ``max_keep_ckpts`` are deleted only after the new one and
      ``last_checkpoint`` are complete.
    * ``meta['rng_states']`` holds every rank's global RNG states (:mod:`cotap_mm.utils.rng_state`),
      restored by :class:`~cotap_mm.engine.hooks.ResumeHook` so that ``--resume`` continues
      bitwise.
    * A model with any NaN / inf parameter or buffer is never saved: :class:`DivergenceError`
      naming the tensors and the last good checkpoint.
    * Unknown keys are refused when the hook is built (MMEngine passes them on to
      ``save_checkpoint`` and fails only at the first save).

    Non-local ``out_dir`` backends keep MMEngine's plain writes (no rename there).

    Args:
        save_rng_state (bool): store the RNG states. Defaults to True.
        **kwargs: :class:`mmengine.hooks.CheckpointHook` arguments (``interval``, ``by_epoch``,
            ``max_keep_ckpts``, ``out_dir``, ...); any other key is a ``TypeError``.
    """

    def __init__(self, save_rng_state: bool = True, **kwargs) -> None:
        check_known_keys('AtomicCheckpointHook', kwargs, _MMENGINE_KEYS + ['save_rng_state'])
        super().__init__(**kwargs)
        self.save_rng_state = bool(save_rng_state)

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if not isinstance(self.file_backend, LocalBackend) or not is_main_process() \
                or not osp.isdir(self.out_dir):
            return
        stale = [n for n in sorted(os.listdir(self.out_dir)) if is_temporary(n)]
        for name in stale:
            os.remove(osp.join(self.out_dir, name))
            runner.logger.info(f'removed {name}, left by an interrupted checkpoint write')

    def _refuse_nonfinite(self, runner, filename: str) -> None:
        bad = nonfinite_tensors(unwrap(runner.model).state_dict())
        if bad:
            shown = ', '.join(bad[:5]) + (f', ... ({len(bad) - 5} more)' if len(bad) > 5 else '')
            last = runner.message_hub.get_info('last_ckpt')
            raise DivergenceError(
                f'refusing to save {filename} at iteration {runner.iter + 1}: {len(bad)} model '
                f'tensor(s) hold NaN or inf ({shown}). Last good checkpoint: '
                f'{last or "none saved yet"}.')

    def _rng_meta(self, meta: Optional[dict]) -> dict:
        meta = dict(meta or {})
        if self.save_rng_state:
            state = capture_rng_state()
            meta['rng_states'] = (all_gather_object(state) if get_world_size() > 1 else [state])
        return meta

    def _save_checkpoint_with_step(self, runner, step, meta):
        filename = self.filename_tmpl.format(step)
        self._refuse_nonfinite(runner, filename)
        meta = self._rng_meta(meta)
        if not isinstance(self.file_backend, LocalBackend):
            return super()._save_checkpoint_with_step(runner, step, meta)

        to_remove: List[int] = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:
                to_remove.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        final = osp.join(self.out_dir, filename)
        self.last_ckpt = final
        runner.message_hub.update_info('last_ckpt', final)
        tmp = temporary_path(final)
        runner.save_checkpoint(self.out_dir, osp.basename(tmp), self.file_client_args,
                               save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta,
                               by_epoch=self.by_epoch, backend_args=self.backend_args)
        if not is_main_process():
            return
        commit(tmp, final)
        atomic_write_text(osp.join(runner.work_dir, 'last_checkpoint'), final)
        for old in to_remove:
            path = osp.join(self.out_dir, self.filename_tmpl.format(old))
            if osp.isfile(path) and osp.abspath(path) != osp.abspath(final):
                os.remove(path)


__all__ = ['AtomicCheckpointHook']

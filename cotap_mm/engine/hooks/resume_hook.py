"""``--resume`` that survives broken checkpoints and continues bitwise."""
from typing import Any, List, Optional

from mmengine.dist import broadcast_object_list, get_rank, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS

from cotap_mm.utils.checkpoint import find_resumable_checkpoint
from cotap_mm.utils.rng_state import restore_rng_state


class _RestoreAfterSkip:
    """Iterator proxy: restores the RNG state right before the first batch after ``skip`` batches.

    ``IterBasedTrainLoop`` advances the dataloader by the resumed iteration count (those batches
    go through the pipeline and use the global generators) and only then loads the first new
    batch; the checkpoint's state belongs exactly there.
    """

    def __init__(self, loop: Any, skip: int, state: dict) -> None:
        self.loop, self.inner, self.skip, self.state = loop, loop.dataloader_iterator, skip, state
        self.calls = 0

    def __iter__(self) -> '_RestoreAfterSkip':
        return self

    def __next__(self) -> Any:
        if self.calls == self.skip:
            restore_rng_state(self.state)
            self.loop.dataloader_iterator = self.inner  # out of the way from now on
        self.calls += 1
        return next(self.inner)


@HOOKS.register_module()
class ResumeHook(Hook):
    """Make ``resume=True`` robust and exact.

    * **Fallback** (``resume=True`` without a file, i.e. ``tools/train.py --resume``): resume from
      the newest *intact* checkpoint of the work dir
      (:func:`~cotap_mm.utils.checkpoint.find_resumable_checkpoint`), with one warning per
      checkpoint skipped on the way (truncated, corrupt, empty ``last_checkpoint``...). When
      checkpoints exist but none is intact the run stops with an error listing them, rather than
      silently starting from scratch. An explicit ``--resume FILE`` is never replaced.
    * **Bitwise**: the global RNG states that
      :class:`~cotap_mm.engine.hooks.AtomicCheckpointHook` saved with the checkpoint are restored
      right before the first new batch is loaded, so the resumed steps draw the same random
      numbers as an uninterrupted run (model buffers, optimizer, schedulers, message hub and the
      data order are MMEngine's). A checkpoint without them resumes with a warning.

    Args:
        restore_rng (bool): restore the saved RNG states. Defaults to True.
    """

    priority = 'VERY_HIGH'

    def __init__(self, restore_rng: bool = True) -> None:
        self.restore_rng = bool(restore_rng)
        self._rng_state: Optional[dict] = None

    def before_run(self, runner) -> None:
        if not (runner._resume and runner._load_from is None):
            return
        found: List[Any] = [None, []]
        if is_main_process():
            found = list(find_resumable_checkpoint(runner.work_dir))
        if get_world_size() > 1:
            broadcast_object_list(found)
        path, skipped = found
        for bad, why in skipped:
            runner.logger.warning(f'--resume: skipped {bad}: {why}')
        if path is None and skipped:
            raise RuntimeError(f'--resume: no intact checkpoint in {runner.work_dir}; skipped '
                               + '; '.join(f'{p} ({w})' for p, w in skipped))
        if path is not None:
            runner.logger.info(f'--resume: resuming from {path}, the newest intact checkpoint')
            runner._load_from = path

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not runner._resume or not self.restore_rng:
            return
        states = checkpoint.get('meta', {}).get('rng_states')
        if not states:
            runner.logger.warning('--resume: the checkpoint holds no RNG state (not written by '
                                  'AtomicCheckpointHook); the resumed run is not bitwise equal '
                                  'to an uninterrupted one')
            return
        rank = get_rank()
        if len(states) != get_world_size():
            runner.logger.warning(f'--resume: the checkpoint holds RNG states of {len(states)} '
                                  f'processes, this run has {get_world_size()}; each rank '
                                  'restores the state of rank (its rank mod that number)')
        self._rng_state = states[rank % len(states)]

    def before_train(self, runner) -> None:
        state, self._rng_state = self._rng_state, None
        if state is None:
            return
        loop = runner.train_loop
        skip = getattr(loop, 'iter', 0) if hasattr(loop, 'dataloader_iterator') else 0
        if skip > 0:
            loop.dataloader_iterator = _RestoreAfterSkip(loop, skip, state)
            runner.logger.info('--resume: the RNG states of the checkpoint are restored once the '
                               f'dataloader has skipped the {skip} trained batches')
        else:
            restore_rng_state(state)
            runner.logger.info('--resume: RNG states restored from the checkpoint')


__all__ = ['ResumeHook']

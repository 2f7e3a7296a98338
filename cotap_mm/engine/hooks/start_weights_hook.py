"""Refuse ``load_from`` / resume checkpoints whose backbone does not fit the model."""

from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS

from cotap_mm.utils.start_weights import check_start_weights
from cotap_mm.utils.state_dict import find_state_dict
from .atomic_checkpoint_hook import unwrap


@HOOKS.register_module()
class StartWeightsHook(Hook):
    """Check a checkpoint against the model before MMEngine loads it (it loads with
    ``strict=False`` and prints mismatches to the console only).

    For ``load_from`` and resume alike: keys of ``checked_prefix`` (the backbone) missing from the
    checkpoint or shaped differently stop the run with
    :class:`~cotap_mm.utils.start_weights.StartWeightsError`, naming how many and the first few;
    every difference (also outside the backbone, e.g. the new heads of a post-pretraining start)
    is written to the run's log file.

    Args:
        strict (bool): False: a deliberately partial start, differences are only logged.
            Defaults to True.
        checked_prefix (str): the part that must fit. Defaults to 'backbone.' (the whole model
            when it has no such keys).
    """

    priority = 'HIGH'

    def __init__(self, strict: bool = True, checked_prefix: str = 'backbone.') -> None:
        self.strict = bool(strict)
        self.checked_prefix = str(checked_prefix)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = find_state_dict(checkpoint, str(runner._load_from))
        what = 'resume' if runner._resume else 'load_from'
        check_start_weights(unwrap(runner.model).state_dict(), state,
                            source=str(runner._load_from), strict=self.strict,
                            checked_prefix=self.checked_prefix, what=what)


__all__ = ['StartWeightsHook']

"""Refuse ``load_from`` / resume checkpoints whose backbone does not fit the model."""

from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS

from cotap_mm.utils.start_weights import check_start_weights, quiet_mmengine_load
from cotap_mm.utils.state_dict import find_state_dict
from .atomic_checkpoint_hook import unwrap


@HOOKS.register_module()
class StartWeightsHook(Hook):
    """Check a checkpoint against the model before MMEngine loads it (it loads with
    ``strict=False`` and prints mismatches to the console only).

    For ``load_from`` and resume alike: keys of ``checked_prefix`` (the backbone) missing from the
    checkpoint or shaped differently stop the run with
    :class:`~cotap_mm.utils.start_weights.StartWeightsError`, naming how many and the first few;
    one summary line (``load_from X: backbone 150/150 keys loaded; not in the checkpoint,
    initialised by the model: teacher (230), neck (7), ...``) goes to the run's log, real
    differences as warnings, every differing key at DEBUG; MMEngine's own console list of every
    missing key is not printed.

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
        model_state = unwrap(runner.model).state_dict()
        check_start_weights(model_state, state, source=str(runner._load_from), strict=self.strict,
                            checked_prefix=self.checked_prefix, what=what)
        # logged above: MMEngine need not list every key (the dict it loads, by its own rule)
        quiet_mmengine_load(checkpoint.get('state_dict', checkpoint), model_state)


__all__ = ['StartWeightsHook']

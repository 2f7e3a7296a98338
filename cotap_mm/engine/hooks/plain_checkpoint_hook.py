"""Write checkpoints that load with ``torch.load(weights_only=True)``."""

from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS

from cotap_mm.utils.checkpoint import from_plain, to_plain


@HOOKS.register_module()
class PlainCheckpointHook(Hook):
    """Store the runner's extra checkpoint state as plain data, and restore it on load.

    mmengine 0.10.7 saves ``message_hub`` with ``HistoryBuffer`` objects and numpy arrays, which
    torch >= 2.6 refuses to unpickle by default. Before saving, this hook converts every part of the
    checkpoint except ``state_dict`` with :func:`cotap_mm.utils.to_plain`; after loading (resume), it
    restores them with :func:`cotap_mm.utils.from_plain` before the runner reads them. So
    ``--resume`` of a checkpoint written with this hook needs no unsafe unpickling.

    Its priority is ``VERY_LOW`` so that it runs after every hook that adds to the checkpoint when
    saving, and the restore happens before the runner uses the loaded ``message_hub``.
    """

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in list(checkpoint):
            if key != 'state_dict':
                checkpoint[key] = to_plain(checkpoint[key])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in list(checkpoint):
            if key != 'state_dict':
                checkpoint[key] = from_plain(checkpoint[key])


__all__ = ['PlainCheckpointHook']

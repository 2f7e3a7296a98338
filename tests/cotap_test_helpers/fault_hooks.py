"""Test-only hooks that inject faults into a training run (imported by test configs)."""
import math
from typing import Sequence

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmpretrain.registry import HOOKS


@HOOKS.register_module()
class PaddedCheckpointHook(Hook):
    """Makes every checkpoint ``mb`` MiB larger (a slow write to kill a process in)."""

    def __init__(self, mb: int = 64) -> None:
        self.mb = mb

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.mb:
            checkpoint['padding'] = torch.ones(self.mb * 2**18)  # float32: 4 bytes each


@HOOKS.register_module()
class NaNBatchHook(Hook):
    """Fills the input images of the given (1-based) iterations with NaN; records the student
    backbone before and after each iteration (``self.before`` / ``self.after``, by iteration)."""

    priority = 'HIGHEST'

    def __init__(self, iters: Sequence[int] = (2, )) -> None:
        self.iters = set(iters)
        self.before, self.after = {}, {}

    def _backbone(self, runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        return {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        it = runner.iter + 1
        self.before[it] = self._backbone(runner)
        if it in self.iters:  # the batch dict is the one the model receives next
            data_batch['inputs'] = [torch.full(x.shape, math.nan) for x in data_batch['inputs']]

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self.after[runner.iter + 1] = self._backbone(runner)


@HOOKS.register_module()
class NaNWeightHook(Hook):
    """Puts a NaN into the first backbone parameter after the given (1-based) iteration, before
    the checkpoint hook runs."""

    priority = 'ABOVE_NORMAL'

    def __init__(self, at: int = 2) -> None:
        self.at = at

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.at:
            model = runner.model.module if is_model_wrapper(runner.model) else runner.model
            with torch.no_grad():
                next(model.backbone.parameters()).view(-1)[0] = math.nan

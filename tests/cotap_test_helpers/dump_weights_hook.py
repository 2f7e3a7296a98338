"""A test-only hook: every rank writes its model parameters at the end of training."""
import os.path as osp

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmpretrain.registry import HOOKS


@HOOKS.register_module()
class DumpWeightsHook(Hook):

    def after_run(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        params = {k: v.detach().cpu() for k, v in model.named_parameters()}
        torch.save({'params': params, 'iter': runner.iter, 'world_size': runner.world_size},
                   osp.join(runner.work_dir, f'weights_rank{get_rank()}.pth'))

"""Parameter groups of the trainable parameters only, with one log line for the frozen ones.

MMEngine's ``DefaultOptimWrapperConstructor`` (with a ``paramwise_cfg``) prints one WARNING per
frozen parameter tensor (``teacher.backbone.layers.0.ln1.weight is skipped since its
requires_grad=False``): 171 lines for a CoTAP ViT-S/16 run, whose EMA teacher is a frozen copy of
the student. :class:`TrainableParamsOptimWrapperConstructor` leaves every submodule whose parameters
are all frozen out before it reaches that warning, counts what it left out and logs one INFO line
per optimizer, e.g. ``optimizer: 163 trainable parameter tensors (21.9M values); 171 frozen tensors
(21.9M values) not optimised: teacher (171)``. Everything else (groups, ``paramwise_cfg``) is the parent's.
"""
import logging
from collections import Counter
from typing import List, Optional, Tuple

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmpretrain.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

__all__ = ['TrainableParamsOptimWrapperConstructor', 'frozen_subtrees', 'format_params_summary']


def frozen_subtrees(module: nn.Module, prefix: str = '') -> List[Tuple[str, int, int]]:
    """The largest submodules (``module`` itself included) whose parameters are all frozen.

    Args:
        module (nn.Module): the model.
        prefix (str): name of ``module``. Defaults to ''.

    Returns:
        list[tuple[str, int, int]]: ``(name, tensors, values)`` per frozen subtree, in module order.
    """
    params = list(module.parameters())
    if params and not any(p.requires_grad for p in params):
        return [(prefix, len(params), sum(p.numel() for p in params))]
    found = []
    for name, child in module.named_children():
        found += frozen_subtrees(child, f'{prefix}.{name}' if prefix else name)
    return found


def _millions(n: int) -> str:
    return f'{n / 1e6:.1f}M'


def format_params_summary(trainable: Tuple[int, int], frozen: Counter, frozen_values: int) -> str:
    """``optimizer: T trainable parameter tensors (V values); F frozen tensors (W values) not
    optimised: name (n), ...`` with the frozen tensors counted per top-level module."""
    line = f'optimizer: {trainable[0]} trainable parameter tensors ({_millions(trainable[1])} values)'
    if frozen:
        names = ', '.join(f'{k} ({v})' for k, v in frozen.most_common())
        line += (f'; {sum(frozen.values())} frozen tensors ({_millions(frozen_values)} values) '
                 f'not optimised: {names}')
    return line


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class TrainableParamsOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` that leaves frozen submodules (e.g. an EMA teacher) out
    without a warning per tensor and logs one summary line instead.

    A submodule whose parameters all have ``requires_grad=False`` is skipped as a whole; a module
    mixing frozen and trainable parameters of its own goes through the parent unchanged (which warns
    for its frozen ones). Use in a config::

        optim_wrapper = dict(constructor='TrainableParamsOptimWrapperConstructor',
                             optimizer=dict(type='AdamW', lr=3e-5, weight_decay=0.024),
                             paramwise_cfg=dict(norm_decay_mult=0.0))

    Args:
        optim_wrapper_cfg (dict): as ``DefaultOptimWrapperConstructor``.
        paramwise_cfg (dict, optional): as ``DefaultOptimWrapperConstructor``.
    """

    def __call__(self, model: nn.Module) -> OptimWrapper:
        module = model.module if hasattr(model, 'module') else model
        skipped = frozen_subtrees(module)
        frozen = Counter()
        for name, tensors, _ in skipped:
            frozen[name.split('.')[0] or type(module).__name__] += tensors
        self._frozen_names = {name for name, _, _ in skipped}
        optim_wrapper = super().__call__(model)
        trainable = [p for p in module.parameters() if p.requires_grad]
        print_log(format_params_summary((len(trainable), sum(p.numel() for p in trainable)),
                                        frozen, sum(v for _, _, v in skipped)),
                  logger='current', level=logging.INFO)
        return optim_wrapper

    def add_params(self,
                   params: List[dict],
                   module: nn.Module,
                   prefix: str = '',
                   is_dcn_module: Optional[int] = None) -> None:
        if prefix in getattr(self, '_frozen_names', ()):
            return
        super().add_params(params, module, prefix=prefix, is_dcn_module=is_dcn_module)

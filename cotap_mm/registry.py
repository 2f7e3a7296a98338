"""The ``cotap_mm`` registry scope: children of mmpretrain's registries.

cotap_mm registers its modules into mmpretrain's registries (``type='CoTAPViT'`` in a config of
``default_scope='mmpretrain'``, ``type='mmpretrain.CoTAPViT'`` from mmseg / mmdet). A config that
inherits ours through the package scope, ``_base_ = 'cotap_mm::cotap/...py'``, gets
``_scope_='cotap_mm'`` on every inherited dict that has a ``type``; MMEngine then imports
``cotap_mm.registry`` and builds those dicts through the registries of scope ``cotap_mm`` found in
its registry tree. The registries below are those: empty children of mmpretrain's, so every name
resolves in mmpretrain's registry (where cotap_mm's modules are) or its parents (MMEngine's).
"""
from mmengine.registry import Registry
from mmpretrain import registry as mmpretrain_registry

SCOPE = 'cotap_mm'


def _child(parent: Registry) -> Registry:
    # the parent's modules are registered lazily, by importing its locations (e.g.
    # mmpretrain.visualization), which a lookup through a child does not trigger: import them here
    # too; importing the package registers cotap_mm's modules (into mmpretrain's registries)
    return Registry(parent.name, parent=parent, scope=SCOPE,
                    locations=[SCOPE] + list(parent._locations))


RUNNERS = _child(mmpretrain_registry.RUNNERS)
RUNNER_CONSTRUCTORS = _child(mmpretrain_registry.RUNNER_CONSTRUCTORS)
LOOPS = _child(mmpretrain_registry.LOOPS)
HOOKS = _child(mmpretrain_registry.HOOKS)
LOG_PROCESSORS = _child(mmpretrain_registry.LOG_PROCESSORS)
OPTIMIZERS = _child(mmpretrain_registry.OPTIMIZERS)
OPTIM_WRAPPERS = _child(mmpretrain_registry.OPTIM_WRAPPERS)
OPTIM_WRAPPER_CONSTRUCTORS = _child(mmpretrain_registry.OPTIM_WRAPPER_CONSTRUCTORS)
PARAM_SCHEDULERS = _child(mmpretrain_registry.PARAM_SCHEDULERS)
DATASETS = _child(mmpretrain_registry.DATASETS)
DATA_SAMPLERS = _child(mmpretrain_registry.DATA_SAMPLERS)
TRANSFORMS = _child(mmpretrain_registry.TRANSFORMS)
MODELS = _child(mmpretrain_registry.MODELS)
MODEL_WRAPPERS = _child(mmpretrain_registry.MODEL_WRAPPERS)
WEIGHT_INITIALIZERS = _child(mmpretrain_registry.WEIGHT_INITIALIZERS)
BATCH_AUGMENTS = _child(mmpretrain_registry.BATCH_AUGMENTS)
TASK_UTILS = _child(mmpretrain_registry.TASK_UTILS)
METRICS = _child(mmpretrain_registry.METRICS)
EVALUATORS = _child(mmpretrain_registry.EVALUATORS)
VISUALIZERS = _child(mmpretrain_registry.VISUALIZERS)
VISBACKENDS = _child(mmpretrain_registry.VISBACKENDS)

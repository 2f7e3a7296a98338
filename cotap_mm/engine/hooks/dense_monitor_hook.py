"""Dense NN-retrieval mIoU during pretraining, and the best-k checkpoints by it.

CoTAP's release selects the checkpoints it keeps (best 5) by a quick dense probe run during
pretraining (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_). This hook does the same with
the cheapest dense protocol, Hummingbird's nearest-neighbour retrieval
(`arXiv 2306.01667 <https://arxiv.org/abs/2306.01667>`_, :mod:`cotap_mm.evaluation.nn_retrieval`):
nothing is trained, so a few hundred labelled images cost one forward pass each.
"""
import json
import os
import os.path as osp
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from mmengine.dist import broadcast_object_list, is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmpretrain.registry import HOOKS

from cotap_mm.evaluation.frozen_model import FEATURE_SETS, dense_feature_extractors
from cotap_mm.evaluation.labelled_sets import load_seg_arrays
from cotap_mm.evaluation.nn_retrieval import dense_nn_retrieval, patches_per_image

__all__ = ['DenseMonitorHook']


@HOOKS.register_module()
class DenseMonitorHook(Hook):
    """Every ``interval`` iterations: NN retrieval mIoU on a small labelled set; keep the best.

    The memory bank is built from ``train_dataset``, the queries come from ``val_dataset`` (both
    mmseg dataset configs read in their on-disk layout by
    :func:`~cotap_mm.evaluation.labelled_sets.load_seg_arrays`, e.g. ``PascalVOCDataset``,
    ``COCOStuff27Dataset`` on the curated lists, ``ADE20KDataset``, ``BaseSegDataset`` on a
    ``make_synthetic_scenes.py`` folder, or generated scenes with ``type='SyntheticScenesSeg'``).
    The images are loaded once, before training, on the main process.

    Each evaluation (between two training steps; the model is switched to eval mode and back)
    logs ``dense/mIoU`` through the runner's message hub, visualizer (``scalars.json``) and logger,
    and appends to ``{out_dir}/dense_monitor.json``. With ``keep_best > 0`` the ``keep_best``
    checkpoints with the highest mIoU are kept as ``best_dense_mIoU_iter_{i}.pth`` in ``out_dir``:
    a new one is written through ``runner.save_checkpoint`` (so every hook's
    ``before_save_checkpoint`` applies) to a temporary name in the same folder, renamed, and only
    then is the one it displaces deleted. The kept list travels in the checkpoints' ``meta`` so a
    resumed run goes on with it.

    Distributed: rank 0 evaluates alone (the other ranks wait at a broadcast of the result and then
    log the same value); only rank 0 writes files.

    Args:
        train_dataset (dict): mmseg dataset config of the memory images.
        val_dataset (dict): mmseg dataset config of the query images.
        interval (int): iterations between evaluations (also after the last). Defaults to 1000.
        image_size (int): side of the squashed images and labels. Defaults to 224.
        max_train (int, optional): first N memory images. Defaults to None (all).
        max_val (int, optional): first N query images. Defaults to None (all).
        features (str): ``'C'`` (default: plain last-layer tokens, any model) or ``'2C'``
            (CoTAP's filtered features; evaluations before the filter's prototypes are
            initialised are skipped with a warning).
        memory_size (int, optional): memory bank cap (Hummingbird sampling). Defaults to None.
        k (int): neighbours. Defaults to 30.
        temperature (float): vote temperature. Defaults to 0.02.
        seed (int): seed of the memory sampling. Defaults to 0.
        batch_size (int): images per forward. Defaults to 16.
        keep_best (int): best checkpoints kept (0 = only log). Defaults to 5.
        out_dir (str, optional): folder of the checkpoints and the JSON. Defaults to the work dir.
        save_optimizer (bool): also store the optimizer state in the kept checkpoints.
            Defaults to False (they are for evaluation).
    """

    priority = 'LOW'
    metric = 'dense/mIoU'

    def __init__(self,
                 train_dataset: dict,
                 val_dataset: dict,
                 interval: int = 1000,
                 image_size: int = 224,
                 max_train: Optional[int] = None,
                 max_val: Optional[int] = None,
                 features: str = 'C',
                 memory_size: Optional[int] = None,
                 k: int = 30,
                 temperature: float = 0.02,
                 seed: int = 0,
                 batch_size: int = 16,
                 keep_best: int = 5,
                 out_dir: Optional[str] = None,
                 save_optimizer: bool = False) -> None:
        for name, v, low in (('interval', interval, 1), ('image_size', image_size, 1),
                             ('k', k, 1), ('batch_size', batch_size, 1),
                             ('keep_best', keep_best, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f'DenseMonitorHook: {name} must be an int >= {low}, got {v!r}')
        for name, ds in (('train_dataset', train_dataset), ('val_dataset', val_dataset)):
            if not isinstance(ds, dict) or 'type' not in ds:
                raise ValueError(f'DenseMonitorHook: {name} must be an mmseg dataset config dict '
                                 f'with a type, got {ds!r}')
        if features not in FEATURE_SETS:
            raise ValueError(f'DenseMonitorHook: features must be one of {FEATURE_SETS}, got '
                             f'{features!r}')
        if not temperature > 0:
            raise ValueError(f'DenseMonitorHook: temperature must be > 0, got {temperature!r}')
        self.train_dataset = dict(train_dataset)
        self.val_dataset = dict(val_dataset)
        self.interval = interval
        self.image_size = image_size
        self.max_train = max_train
        self.max_val = max_val
        self.features = features
        self.memory_size = memory_size
        self.k = k
        self.temperature = float(temperature)
        self.seed = seed
        self.batch_size = batch_size
        self.keep_best = keep_best
        self.out_dir = out_dir
        self.save_optimizer = save_optimizer
        self.data: Optional[Dict[str, Any]] = None
        self.kept: List[Dict[str, Any]] = []  # {'iter', 'mIoU', 'path'}, best first
        self.history: List[Dict[str, Any]] = []

    # ------------------------------------------------------------------ data and evaluation
    def before_train(self, runner) -> None:
        if self.out_dir is None:
            self.out_dir = runner.work_dir
        self._check_data(runner)
        if not is_main_process():
            return
        tr_i, tr_m, classes = load_seg_arrays(self.train_dataset, self.image_size, self.max_train)
        va_i, va_m, val_classes = load_seg_arrays(self.val_dataset, self.image_size, self.max_val)
        if len(classes) != len(val_classes):
            raise ValueError(f'DenseMonitorHook: train_dataset has {len(classes)} classes, '
                             f'val_dataset {len(val_classes)}')
        self.data = dict(train=(tr_i, tr_m), val=(va_i, va_m), num_classes=len(classes),
                         per_image=patches_per_image(self.memory_size, len(tr_i)))
        runner.logger.info(f'DenseMonitorHook: NN retrieval on {len(va_i)} images with a memory '
                           f'of {len(tr_i)} images ({len(classes)} classes) every '
                           f'{self.interval} iterations')

    def _config_key(self, runner) -> str:
        """Where this hook sits in the config (``custom_hooks.N``), for messages."""
        hooks = (getattr(runner, 'cfg', None) or {}).get('custom_hooks', None) or []
        for i, h in enumerate(hooks):
            kind = h.get('type') if isinstance(h, dict) else None
            if kind is type(self) or (isinstance(kind, str) and kind.split('.')[-1] ==
                                      type(self).__name__):
                return f'custom_hooks.{i}'
        return type(self).__name__

    def _check_data(self, runner) -> None:
        """A missing data root, image folder or image list stops the run before training, naming
        the config keys that point elsewhere."""
        key = self._config_key(runner)
        for name, ds in (('train_dataset', self.train_dataset), ('val_dataset', self.val_dataset)):
            root = ds.get('data_root')
            if root is None:  # generated scenes, or paths given whole
                continue
            needed = [root] + [osp.join(root, sub) for sub in (ds.get('data_prefix') or {}).values()]
            if ds.get('ann_file'):
                needed.append(osp.join(root, ds['ann_file']))
            missing = next((p for p in needed if not osp.exists(p)), None)
            if missing is not None:
                raise FileNotFoundError(
                    f'DenseMonitorHook ({key}): {name} ({ds["type"]}) needs {missing}, which does '
                    f'not exist. Put the labelled set there, point the hook at your copy '
                    f'(--cfg-options {key}.train_dataset.data_root=DIR '
                    f'{key}.val_dataset.data_root=DIR), or remove the hook from custom_hooks.')

    @torch.no_grad()
    def evaluate(self, runner) -> Optional[Dict[str, Any]]:
        """NN retrieval of the current model (main process); None if the features are not ready.
        """
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        try:
            extract = dense_feature_extractors(model, [self.features])[self.features]
        except ValueError as err:
            if self.features == '2C' and 'never initialised' in str(err):
                runner.logger.warning(f'DenseMonitorHook: iteration {runner.iter + 1} skipped: '
                                      f'{err}')
                return None
            raise
        d = self.data
        device = next(model.parameters()).device
        return dense_nn_retrieval(extract, d['train'], d['val'], d['num_classes'], d['per_image'],
                                  self.k, self.temperature, self.seed, self.batch_size, device)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not (self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner)):
            return
        it = runner.iter + 1
        score = [None]
        if is_main_process():
            res = self.evaluate(runner)
            score = [None if res is None else float(res['mIoU'])]
        broadcast_object_list(score, src=0)
        if score[0] is None or np.isnan(score[0]):
            return
        runner.message_hub.update_scalar(self.metric, score[0])
        if not is_main_process():
            return
        runner.visualizer.add_scalars({self.metric: score[0]}, step=it)
        runner.logger.info(f'DenseMonitorHook: iteration {it}: {self.metric} = '
                           f'{100 * score[0]:.2f}')
        self.history.append(dict(iter=it, mIoU=score[0]))
        if self.keep_best:
            self._keep(runner, it, score[0])
        self._write_json(osp.join(self.out_dir, 'dense_monitor.json'))

    # ------------------------------------------------------------------ best-k checkpoints
    def _keep(self, runner, it: int, score: float) -> None:
        """Save the current model if it is among the best ``keep_best``; drop the one displaced."""
        if len(self.kept) >= self.keep_best and score <= self.kept[-1]['mIoU']:
            return
        name = f'best_dense_mIoU_iter_{it}.pth'
        path = osp.join(self.out_dir, name)
        tmp = osp.join(self.out_dir, f'.{name}.tmp')
        try:
            runner.save_checkpoint(self.out_dir, osp.basename(tmp),
                                   save_optimizer=self.save_optimizer,
                                   save_param_scheduler=False, by_epoch=False)
            if not osp.isfile(tmp):
                raise FileNotFoundError(f'DenseMonitorHook: runner.save_checkpoint wrote no {tmp}')
            os.replace(tmp, path)
        finally:
            if osp.exists(tmp):
                os.remove(tmp)
        self.kept.append(dict(iter=it, mIoU=score, path=path))
        self.kept.sort(key=lambda e: -e['mIoU'])
        for old in self.kept[self.keep_best:]:
            if osp.isfile(old['path']):
                os.remove(old['path'])
        self.kept = self.kept[:self.keep_best]
        runner.logger.info(f'DenseMonitorHook: kept {path}; best: ' + ', '.join(
            f'iter {e["iter"]} ({100 * e["mIoU"]:.2f})' for e in self.kept))

    def _write_json(self, path: str) -> None:
        tmp = path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(dict(metric=self.metric, features=self.features, history=self.history,
                           kept=self.kept), f, indent=2)
        os.replace(tmp, path)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint.setdefault('meta', {})['dense_monitor'] = dict(
            kept=[dict(e) for e in self.kept], history=[dict(e) for e in self.history])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get('meta', {}).get('dense_monitor')
        if not state:
            return
        self.history = [dict(e) for e in state.get('history', [])]
        self.kept = []
        for e in state.get('kept', []):
            if osp.isfile(e['path']):
                self.kept.append(dict(e))
            else:
                runner.logger.warning(f'DenseMonitorHook: kept checkpoint {e["path"]} of the '
                                      'resumed run is gone; it leaves the best list')

"""Warn through the MMEngine logger when a DINO-style self-distillation term collapses.

DINO (`arXiv 2104.14294 <https://arxiv.org/abs/2104.14294>`_, Sec. 5.3, Fig. 7) names two failure
modes of a centred, sharpened teacher and tells them apart by the teacher's entropy: with too
little sharpening every sample's teacher distribution becomes as spread as the batch's
(**collapse to a uniform output**), with too little centring the whole batch goes to one
prototype (**collapse to one dimension**). The algorithms return these entropies beside their
losses (:func:`~cotap_mm.models.losses.dino_cls_loss.collapse_log_vars`); this hook reads them from
the train step's log variables and says so once, in words, when one of the two modes sets in.
"""
import math
from collections import deque
from typing import Deque, Dict, Optional, Sequence, Tuple

from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS

__all__ = ['CollapseMonitorHook', 'collapse_verdict']


def collapse_verdict(entropy: float, marginal_entropy: float, uniform_ratio: float = 0.95,
                     min_marginal_entropy: float = 0.1) -> Optional[str]:
    """Which of DINO's collapse modes the (mean) teacher entropies show, if any.

    Args:
        entropy (float): mean per-sample teacher entropy H (nats).
        marginal_entropy (float): entropy M of the batch-mean teacher distribution (nats).
        uniform_ratio (float): uniform collapse when ``H >= uniform_ratio * M`` (every sample
            as spread as the whole batch). Defaults to 0.95.
        min_marginal_entropy (float): one-dimension collapse when ``M < min_marginal_entropy``.
            Defaults to 0.1 nats.

    Returns:
        str | None: ``'one dimension'``, ``'uniform'`` or None (healthy).
    """
    if marginal_entropy < min_marginal_entropy:
        return 'one dimension'
    if entropy >= uniform_ratio * marginal_entropy:
        return 'uniform'
    return None


@HOOKS.register_module()
class CollapseMonitorHook(Hook):
    """Logs a warning (once per term and run) when a self-distillation term collapses.

    For every ``prefix`` it looks for ``{prefix}teacher_entropy`` and
    ``{prefix}teacher_marginal_entropy`` in the train step's outputs (``dino_`` for DINO / SCFS,
    ``cls_`` for iBOT + de-coupling and CoTAP's optional DINO term); terms that are absent are
    skipped. After ``start_iter``, once ``window`` values are collected, the window means go to
    :func:`collapse_verdict`; a collapse is written with ``runner.logger.warning`` with the
    numbers and what to try. Nothing is changed in the training. Our addition: DINO only plots
    these quantities; the thresholds are our choice (config options).

    Args:
        window (int): iterations averaged. Defaults to 50.
        uniform_ratio (float): in (0, 1]; see :func:`collapse_verdict`. Defaults to 0.95.
        min_marginal_entropy (float): >= 0 nats; see :func:`collapse_verdict`. Defaults to 0.1.
        prefixes (Sequence[str]): log-variable prefixes of the monitored terms.
            Defaults to ``('dino_', 'cls_')``.
        start_iter (int): iterations (0-based) ignored at the start. A freshly initialised
            teacher is close to uniform as well, so skip that phase (and a temperature
            warm-up); our configs use 1,000 (the tiny DINO: 100). Defaults to 0.
    """

    priority = 'LOW'

    def __init__(self,
                 window: int = 50,
                 uniform_ratio: float = 0.95,
                 min_marginal_entropy: float = 0.1,
                 prefixes: Sequence[str] = ('dino_', 'cls_'),
                 start_iter: int = 0) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f'window must be an int >= 1, got {window!r}')
        if not 0 < uniform_ratio <= 1:
            raise ValueError(f'uniform_ratio must be in (0, 1], got {uniform_ratio!r}')
        if not min_marginal_entropy >= 0:
            raise ValueError(f'min_marginal_entropy must be >= 0, got {min_marginal_entropy!r}')
        if isinstance(prefixes, str) or not prefixes or not all(
                isinstance(p, str) for p in prefixes):
            raise ValueError(f'prefixes must be a non-empty sequence of str, got {prefixes!r}')
        if isinstance(start_iter, bool) or not isinstance(start_iter, int) or start_iter < 0:
            raise ValueError(f'start_iter must be an int >= 0, got {start_iter!r}')
        self.window = window
        self.uniform_ratio = float(uniform_ratio)
        self.min_marginal_entropy = float(min_marginal_entropy)
        self.prefixes = tuple(prefixes)
        self.start_iter = start_iter
        self._values: Dict[str, Deque[Tuple[float, float]]] = {}
        self.warned: Dict[str, str] = {}

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        if not outputs or runner.iter < self.start_iter:
            return
        for prefix in self.prefixes:
            h_key, m_key = f'{prefix}teacher_entropy', f'{prefix}teacher_marginal_entropy'
            if prefix in self.warned or h_key not in outputs or m_key not in outputs:
                continue
            vals = self._values.setdefault(prefix, deque(maxlen=self.window))
            vals.append((float(outputs[h_key]), float(outputs[m_key])))
            if len(vals) < self.window:
                continue
            h = sum(v[0] for v in vals) / len(vals)
            m = sum(v[1] for v in vals) / len(vals)
            verdict = collapse_verdict(h, m, self.uniform_ratio, self.min_marginal_entropy)
            if verdict is None:
                continue
            self.warned[prefix] = verdict
            if verdict == 'uniform':
                what = (f'teacher entropy {h:.3f} is {h / max(m, 1e-12):.2f} of the batch '
                        f'marginal entropy {m:.3f} (about {math.exp(m):.0f} prototypes in use)')
                advice = ('lower the teacher temperature, raise the batch size, weaken the '
                          "augmentations or try centering='sinkhorn_knopp'")
            else:
                what = f'the batch marginal entropy is {m:.3f} nats: one prototype takes all'
                advice = 'centre faster (lower center_momentum) or raise the teacher temperature'
            runner.logger.warning(
                f'CollapseMonitorHook: {prefix}* term collapsed to a {verdict} output at '
                f'iteration {runner.iter + 1} (means over {self.window} iterations): {what} '
                f'(DINO, arXiv 2104.14294, Sec. 5.3). Its loss then teaches nearly nothing; '
                f'{advice}.')

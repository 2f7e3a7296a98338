"""``loss_proto_entropy``: the object prototypes learn from a bank of pooled token maps, after a
k-means initialisation on that bank."""
from typing import Dict

import torch
import torch.nn as nn
from mmengine.dist import broadcast, is_main_process

from ...necks.prototype_ops import pool_bank_samples
from .step import CoTAPStep, CoTAPTerm, source_positions, split_batch

__all__ = ['PrototypeTerm']


class PrototypeTerm(CoTAPTerm):
    """The prototype bank (``model.proto_bank``, a :class:`FeatureQueue` of flattened
    [C, K, K] samples), the k-means initialisation of ``model.neck``'s prototypes once the bank
    is full, and ``loss_proto_entropy`` (``model.proto_loss``)."""

    loss_attrs = ('proto_loss', )

    @torch.no_grad()
    def before_forward(self, model: nn.Module) -> None:
        """k-means on the full bank (rank 0, broadcast), before any forward: it changes the
        prototypes in place."""
        neck, bank = model.neck, model.proto_bank
        if neck.initialized or not bank.full:
            return
        with torch.autocast(device_type=bank.queue.device.type, enabled=False):
            if is_main_process():
                neck.init_prototypes_(self.bank_samples(model), iters=model.kmeans_iters,
                                      seed=model.kmeans_seed)
        broadcast(neck.prototypes.data, 0)
        neck.mark_initialized()
        if model.teacher_prototypes == 'copy':
            model.teacher['neck'].load_prototypes_(neck.prototypes.data)

    @staticmethod
    def bank_samples(model: nn.Module) -> torch.Tensor:
        """The bank's samples [S, C, K, K] (float32)."""
        K = model.neck.kernel_size
        return model.proto_bank.features().float().reshape(-1, model.neck.embed_dims, K, K)

    def __call__(self, model: nn.Module, step: CoTAPStep) -> Dict[str, torch.Tensor]:
        pos = source_positions(step.data_samples, model.bank_sources, model.source_key,
                               model._warned_sources)
        index = None if pos is None else torch.as_tensor(pos, dtype=torch.long,
                                                         device=step.device)
        tok = split_batch(step.tokens, step.G, step.B, index)
        tok = tok.reshape(-1, *tok.shape[2:])
        if tok.shape[0]:
            with torch.no_grad():
                samples = pool_bank_samples(tok[:, 1:].detach().float(), step.hw,
                                            model.neck.kernel_size)
                model.proto_bank.enqueue(samples.flatten(1))
        protos = model.neck.prototypes
        if not model.neck.initialized:
            return dict(loss_proto_entropy=protos.sum() * 0.0)
        with torch.autocast(device_type=protos.device.type, enabled=False):
            return dict(loss_proto_entropy=model.proto_loss(protos.float(),
                                                            self.bank_samples(model)))

"""FIFO queue of past feature vectors: the Sinkhorn queues and the prototype bank of CoTAP.

CoTAP (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_) runs Sinkhorn on
the current teacher vectors together with a queue of past ones: 262,144 foreground patch vectors
(at most 2,048 added per GPU and step) for the patch term and 32,768 CLS vectors (at most 100 per
GPU and step) for the CLS terms, both *split across GPUs* (each process keeps
``size / world_size``), as in SwAV's ``queue_length // world_size``.
"""
import math
from typing import Optional

import torch
import torch.nn as nn
from mmengine.dist import get_world_size

from .host_state import HostMirrorMixin

__all__ = ['FeatureQueue']


class FeatureQueue(HostMirrorMixin, nn.Module):
    """Fixed-size FIFO of D-dim vectors held in buffers (saved in checkpoints, resumable).

    Buffers: ``queue`` [capacity, D] float32, ``ptr`` (next write position) and ``count``
    (number of valid entries, <= capacity). :meth:`enqueue` writes at most ``max_per_step`` rows
    (a random subset when more are given; a uniform subset of the step's vectors, our choice for
    "<= 2,048 added per GPU-step"), overwriting the oldest entries once full.
    :meth:`features` returns the valid entries (what Sinkhorn adds to the current vectors);
    :meth:`ordered` the same, oldest first.

    ``ptr`` and ``count`` have host copies (:class:`HostMirrorMixin`), so a training step reads
    them without a device sync.

    Every process fills its own queue, so the owner must exclude these buffers from DDP's buffer
    broadcast (``CoTAP._ddp_params_and_buffers_to_ignore``); checkpoints hold rank 0's queue,
    which every rank loads on resume. Loading a queue of another capacity (e.g. resuming on
    another number of GPUs) keeps its newest ``min(count, capacity)`` entries.

    Args:
        size (int): total size over all processes (official 262,144 patch / 32,768 CLS vectors).
        dim (int): D, the vector width.
        max_per_step (int): most vectors added per call. Defaults to 2048.
        split_across_ranks (bool): capacity ``ceil(size / world_size)`` per process (SwAV,
            CoTAP) instead of ``size``. The world size is read when the module is built (after
            MMEngine's runner set up the process group). Defaults to True.
        fill_first (bool): until the queue is full, take every row given (CoTAP's prototype
            bank); ``max_per_step`` applies once it is full. Defaults to False.
        sorted_subset (bool): the random subset kept when too many rows are given is drawn on
            the CPU and kept in row order (the Sinkhorn queues); False draws it on the rows'
            device, in draw order (the prototype bank). Defaults to True.
    """

    def __init__(self, size: int, dim: int, max_per_step: int = 2048,
                 split_across_ranks: bool = True, fill_first: bool = False,
                 sorted_subset: bool = True) -> None:
        super().__init__()
        for name, val in (('size', size), ('dim', dim), ('max_per_step', max_per_step)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f'FeatureQueue {name} must be a positive int, got {val!r}')
        self.size = size
        self.dim = dim
        self.max_per_step = max_per_step
        self.split_across_ranks = bool(split_across_ranks)
        self.fill_first = bool(fill_first)
        self.sorted_subset = bool(sorted_subset)
        world = get_world_size() if self.split_across_ranks else 1
        self.capacity = max(1, math.ceil(size / max(world, 1)))
        self.register_buffer('queue', torch.zeros(self.capacity, dim))
        self.register_mirrored_buffer('ptr', 0)  # next write position
        self.register_mirrored_buffer('count', 0)  # valid entries

    def __len__(self) -> int:
        return self._count

    @property
    def full(self) -> bool:
        return self._count >= self.capacity

    def features(self) -> torch.Tensor:
        """The valid entries [count, D] (storage order)."""
        return self.queue[:self._count]

    def ordered(self) -> torch.Tensor:
        """The valid entries [count, D], oldest first."""
        if self._count < self.capacity:
            return self.queue[:self._count]
        return torch.roll(self.queue, -self._ptr, dims=0)

    @torch.no_grad()
    def load_entries_(self, x: torch.Tensor) -> None:
        """Replace the contents by the rows of ``x`` [n, D] (n <= capacity), oldest first."""
        if x.dim() != 2 or x.shape[1] != self.dim or x.shape[0] > self.capacity:
            raise ValueError(f'load_entries_ expects [n <= {self.capacity}, {self.dim}], got '
                             f'{tuple(x.shape)}')
        self.queue.zero_()
        self.queue[:x.shape[0]] = x.to(self.queue)
        self._set(x.shape[0] % self.capacity, x.shape[0])

    @property
    def _ptr(self) -> int:
        return self.host_value('ptr')

    @property
    def _count(self) -> int:
        return self.host_value('count')

    def _set(self, ptr: int, count: int) -> None:
        self.set_host_value('ptr', ptr)
        self.set_host_value('count', count)

    @torch.no_grad()
    def enqueue(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> int:
        """Add (at most ``max_per_step`` of) the rows of ``x`` [n, D]; returns how many.

        Rows are kept in their given order; when more than ``max_per_step`` are given a random
        subset (``torch.randperm``, ``generator`` if given) is kept, in increasing row order.
        """
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f'FeatureQueue.enqueue expects [n, {self.dim}], got '
                             f'{tuple(x.shape)}')
        x = x.detach()
        per_step = (self.capacity - self._count if self.fill_first and not self.full else
                    self.max_per_step)
        n = min(x.shape[0], per_step, self.capacity)
        if n == 0:
            return 0
        if n < x.shape[0]:
            if self.sorted_subset:
                keep = torch.randperm(x.shape[0], generator=generator)[:n].sort().values
            else:
                keep = torch.randperm(x.shape[0], generator=generator, device=x.device)[:n]
            x = x[keep.to(x.device)]
        idx = (torch.arange(n, device=self.queue.device) + self._ptr) % self.capacity
        self.queue[idx] = x.to(self.queue.device, self.queue.dtype)
        self._set((self._ptr + n) % self.capacity, min(self._count + n, self.capacity))
        return n

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        key = prefix + 'queue'
        q = state_dict.get(key)
        if (isinstance(q, torch.Tensor) and q.dim() == 2 and q.shape[1] == self.dim
                and q.shape[0] != self.capacity and prefix + 'ptr' in state_dict
                and prefix + 'count' in state_dict):
            # another capacity (another world size): keep the newest entries, oldest first
            cap, ptr = q.shape[0], int(state_dict[prefix + 'ptr'])
            cnt = int(state_dict[prefix + 'count'])
            ordered = q[:cnt] if cnt < cap else torch.roll(q, -ptr, dims=0)
            keep = ordered[-self.capacity:] if ordered.shape[0] > 0 else ordered
            new_q = torch.zeros_like(self.queue)
            new_q[:keep.shape[0]] = keep.to(new_q.dtype)
            state_dict = dict(state_dict)
            state_dict[key] = new_q
            state_dict[prefix + 'count'] = torch.tensor(keep.shape[0], dtype=torch.long)
            state_dict[prefix + 'ptr'] = torch.tensor(keep.shape[0] % self.capacity,
                                                      dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f'size={self.size}, capacity={self.capacity}, dim={self.dim}, '
                f'max_per_step={self.max_per_step}')

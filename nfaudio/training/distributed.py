"""Data-parallel training under ``torchrun``: the process group, sharded sampling, gathering, and who writes.

``torchrun --nproc-per-node N -m nfaudio train|cv ...`` starts N processes with ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE`` in their environment; :func:`distributed` joins them into a process group (NCCL on CUDA, gloo on
the CPU) for the duration of a job. Every rank trains on its share of one global sample of the epoch
(:func:`shard`: the same permutation, or the same class-balanced weighted draw, a one-process run would use,
seeded by ``(seed, epoch)``; rank ``r`` takes every ``world``-th index from ``r``), DistributedDataParallel
averages the gradients, and AGC clips the averaged gradients before the optimizer step. With ``train.batch_size``
``b`` per rank, a step sees the same ``world * b`` clips as a one-process step with batch ``world * b``.
Validation is sharded too and :func:`gather` reassembles the predictions in the one-process order, so metrics,
early stopping and out-of-fold rows are computed over the whole fold, identically on every rank. Rank 0 alone
writes the run directory (checkpoints, history, curves, config) and logs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = ["World", "barrier", "broadcast", "device_for", "distributed", "gather", "reduce_sum", "shard", "world",
           "wrap"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (``rank 0 of 1`` without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The process that writes files and logs."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.size > 1


def world() -> World:
    """The world of an initialised process group, else of the launcher's environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``), else a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


@contextlib.contextmanager
def distributed(device: str = "auto") -> Iterator[World]:
    """Join the torchrun process group for a block (and leave it afterwards) when launched with several
    processes; a plain single process yields ``World()`` and changes nothing.

    Args:
        device: the run's ``train.device``: NCCL for CUDA, gloo for the CPU.

    Raises:
        RuntimeError: launched with several processes but torch was built without distributed support.
    """
    w = world()
    if not w.enabled or dist.is_initialized():
        yield w
        return
    if not dist.is_available():
        raise RuntimeError("torchrun started several processes, but this torch has no torch.distributed")
    cuda = torch.cuda.is_available() and device != "cpu" and not device.startswith("cpu")
    if cuda:
        torch.cuda.set_device(w.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    log.info("rank %d of %d joined the process group (%s)", w.rank, w.size, dist.get_backend())
    try:
        yield world()
    finally:
        dist.destroy_process_group()


def device_for(w: World, device: torch.device) -> torch.device:
    """A rank's device: ``cuda:<local_rank>`` when training on CUDA with several processes."""
    if w.enabled and device.type == "cuda":
        return torch.device("cuda", w.local_rank)
    return device


def shard(n: int, w: World, generator: torch.Generator, weights: torch.Tensor | None = None) -> list[int]:
    """This rank's indices of one epoch's global sample of ``n`` rows.

    The global sample is what a single process's loader draws with the same generator: the permutation of
    ``DataLoader(shuffle=True, generator=...)``, or ``WeightedRandomSampler``'s draw for weighted sampling. It is
    padded with its own first indices to a multiple of the world size (as ``DistributedSampler`` does), and rank
    ``r`` takes every ``size``-th index from ``r``, so consecutive per-rank batches together cover consecutive
    global batches.
    """
    if weights is None:
        # A shuffling DataLoader draws its base seed from its generator before the sampler's permutation: draw it
        # too, so the order is the one a single process's DataLoader(shuffle=True, generator=...) produces.
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        order = torch.randperm(n, generator=generator)
    else:  # WeightedRandomSampler: the generator is the sampler's alone
        order = torch.multinomial(weights, n, replacement=True, generator=generator)
    total = math.ceil(n / w.size) * w.size
    if total > n:
        order = torch.cat([order, order[:total - n]])
    return order[w.rank::w.size].tolist()


def gather(values: np.ndarray, ids: Sequence[str], w: World) -> tuple[np.ndarray, list[str]]:
    """Reassemble rows sharded ``rank::size`` (every rank's ``values`` and ``ids``) in the one-process order."""
    if not w.enabled:
        return values, list(ids)
    parts: list[Any] = [None] * w.size
    dist.all_gather_object(parts, (values, list(ids)))
    n = sum(len(p[1]) for p in parts)
    out_values = np.empty((n, *values.shape[1:]), dtype=values.dtype)
    out_ids: list[str] = [""] * n
    for r, (v, i) in enumerate(parts):
        out_values[r::w.size] = v
        out_ids[r::w.size] = i
    return out_values, out_ids


def reduce_sum(values: Sequence[float], w: World) -> list[float]:
    """Sum of ``values`` over all ranks (the values themselves in a single process)."""
    if not w.enabled:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def broadcast(value: Any, w: World) -> Any:
    """Rank 0's ``value`` on every rank (the value itself in a single process)."""
    if not w.enabled:
        return value
    box = [value if w.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(w: World) -> None:
    """Wait for every rank (no-op in a single process)."""
    if w.enabled:
        dist.barrier()


def wrap(model: nn.Module, w: World, device: torch.device, find_unused: bool = False) -> nn.Module:
    """``model`` for the training step: DistributedDataParallel with several processes, else the model itself.

    A backbone with BatchNorm is converted to SyncBatchNorm on CUDA; on the CPU (gloo) SyncBatchNorm does not run,
    so BatchNorm statistics stay per process and the run says so. NFNets have no BatchNorm.
    """
    if not w.enabled:
        return model
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            log.info("BatchNorm layers converted to SyncBatchNorm for data-parallel training")
        elif w.is_main:
            log.warning("the backbone has BatchNorm: on the CPU (gloo) SyncBatchNorm cannot run, so each process "
                        "normalises with the statistics of its own %s of the batch", f"1/{w.size}")
    ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)

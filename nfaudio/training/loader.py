"""The training input pipeline: one DataLoader per run with persistent workers, the epoch sent with each index,
and the recipe's decoded-audio cache (``data.cache``, :class:`nfaudio.audio.cache.DecodedCache`).

A new DataLoader per epoch respawns its workers (and re-imports torch in them) every epoch; persistent workers keep
their own copy of the dataset, so a ``set_epoch`` in the main process would not reach them. Instead
:class:`EpochSampler` yields ``(epoch, row)`` pairs and :class:`EpochIndexed` sets the epoch inside the worker
before reading the row: the order (``shard`` of the generator seeded ``seed * 1000 + epoch``, the order a
one-process ``DataLoader(shuffle=True, generator=...)`` or ``WeightedRandomSampler`` draws) and the per-item crops
depend on ``(seed, epoch)`` alone, so a resumed run reads what an uninterrupted one reads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from nfaudio.audio.cache import DecodedCache
from nfaudio.config import Config
from nfaudio.training.distributed import World, shard

__all__ = ["EpochIndexed", "EpochSampler", "build_cache", "train_loader"]

log = logging.getLogger(__name__)


class EpochIndexed(Dataset):
    """``dataset`` indexed by ``(epoch, row)``: sets the epoch (``dataset.set_epoch``) when it changes."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset, self.epoch = dataset, None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: tuple[int, int]) -> Any:
        epoch, row = index
        if epoch != self.epoch:
            self.dataset.set_epoch(epoch)
            self.epoch = epoch
        return self.dataset[row]


class EpochSampler(Sampler):
    """This rank's rows of one epoch as ``(epoch, row)`` pairs; call :meth:`set_epoch` before each epoch.

    Args:
        n: rows in the dataset. seed: the run's seed (the epoch's generator is seeded ``seed * 1000 + epoch``).
        world: this process's rank and world size. weights: sampling weights (with replacement) or None (a
            permutation).
    """

    def __init__(self, n: int, seed: int, world: World, weights: np.ndarray | None = None) -> None:
        self.n, self.seed, self.world, self.epoch = int(n), int(seed), world, 0
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.n // self.world.size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        gen = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        for row in shard(self.n, self.world, gen, self.weights):
            yield self.epoch, row


def train_loader(dataset: Dataset, batch_size: int, seed: int, world: World, weights: np.ndarray | None,
                 drop_last: bool, **loader_kw: Any) -> tuple[DataLoader, EpochSampler]:
    """The run's one training DataLoader (persistent workers when ``num_workers > 0``) and its sampler.

    The loader's own generator is fixed, so it never draws from the global torch RNG (which the checkpoint saves).
    """
    sampler = EpochSampler(len(dataset), seed, world, weights)
    workers = int(loader_kw.get("num_workers", 0))
    loader = DataLoader(EpochIndexed(dataset), batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                        generator=torch.Generator().manual_seed(seed), persistent_workers=workers > 0, **loader_kw)
    return loader, sampler


def build_cache(cfg: Config, paths: list[str]) -> DecodedCache | None:
    """The ``data.cache`` of a recipe (None for ``"none"``); a memory cache is filled here, in the main process,
    before any DataLoader forks its workers (they then share its pages copy-on-write)."""
    d = cfg.data
    if d.cache == "none":
        return None
    cache = DecodedCache(d.cache, cfg.audio.sample_rate, d.cache_dir)
    if d.cache == "memory":
        cache.fill(paths, workers=max(1, d.num_workers))
    log.info("decoded-audio cache: %r", cache)
    return cache

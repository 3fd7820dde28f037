"""Deterministic, shardable, resumable index samplers.

The order of an epoch is a pure function of (seed, epoch), so a run resumed mid-epoch can skip exactly
the samples it has already seen and end with the same weights as an uninterrupted run.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


class TrainSampler(Sampler[int]):
    """Shuffled per epoch from (seed, epoch); sharded across ranks like DistributedSampler (padded so
    every rank gets the same number of samples); `start` skips the first samples of this rank's share."""

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if size <= 0:
            raise ValueError("TrainSampler needs a non-empty dataset")
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, seed, rank, world_size, shuffle
        self.per_rank = math.ceil(size / world_size)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.size, generator=gen).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank * self.world_size
        order += order[: total - len(order)]          # pad to an even split across ranks
        return order[self.rank:total:self.world_size]

    def __iter__(self):
        return iter(self._indices()[self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start


class ShardSampler(Sampler[int]):
    """Evaluation order: rank r sees indices r, r + W, r + 2W, ... with no padding, so the union over
    ranks covers every sample exactly once."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, size, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

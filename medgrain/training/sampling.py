"""Deterministic, resumable, rank-sharded batches; augmentation seeded per sample.

The global batch of step k is the same whatever the number of processes: rank r takes the r-th
slice of it. A resumed run skips the batches already consumed without loading them, and each
sample's augmentation is drawn from a generator seeded by (seed, epoch, index), so the next steps
see exactly the data an uninterrupted run would have seen, with any number of workers.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler


def _mix(*values: int) -> int:
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


class ShardedBatchSampler(Sampler[list[int]]):
    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True, multiple_of: int = 1):
        """``multiple_of``: with drop_last, an epoch has a multiple of this many batches (gradient
        accumulation: a trailing partial group would leak its gradient into the next epoch's first step)."""
        if n <= 0:
            raise ValueError("cannot sample batches from an empty split")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.shuffle, self.drop_last = rank, world_size, shuffle, drop_last
        self.multiple_of = multiple_of
        self.epoch, self.start_batch = 0, 0
        if drop_last and len(self) == 0:
            raise ValueError(
                f"the split has {n} records, fewer than one global batch "
                f"({world_size} process(es) x batch_size {batch_size}); lower train.batch_size"
            )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        return torch.randperm(self.n, generator=g)

    def __len__(self) -> int:
        global_batch = self.batch_size * self.world_size
        if self.drop_last:
            batches = self.n // global_batch
            return batches - batches % self.multiple_of
        return -(-(self.n // self.world_size) // self.batch_size)

    def epoch_indices(self) -> torch.Tensor:
        """Every index the current epoch trains on (all ranks, all its batches; training batches only)."""
        return self._order()[: len(self) * self.batch_size * self.world_size]

    def __iter__(self):
        order = self._order()
        if self.drop_last:
            gb = self.batch_size * self.world_size
            for k in range(self.start_batch, len(self)):
                chunk = order[k * gb:(k + 1) * gb]
                yield chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size].tolist()
        else:
            # Evaluation: equal contiguous shards per rank (the remainder below world_size is left out),
            # so every rank runs the same number of equally sized batches, which gathering needs.
            per_rank = self.n // self.world_size
            shard = order[self.rank * per_rank:(self.rank + 1) * per_rank]
            for k in range(self.start_batch, len(self)):
                yield shard[k * self.batch_size:(k + 1) * self.batch_size].tolist()


class EpochSeededDataset(Dataset):
    """Draws each sample's random augmentation from a generator seeded by (seed, epoch, index)."""

    def __init__(self, base: Dataset, seed: int):
        self.base, self.seed, self.epoch = base, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(self.seed, self.epoch, index))
            return self.base[index]


def source_quotas(total: int, weights: list[float]) -> list[int]:
    """``total`` samples split in proportion to ``weights`` (largest remainder: they sum to ``total``)."""
    if not weights or any(not w > 0 for w in weights):
        raise ValueError(f"source weights must be > 0, got {weights}")
    shares = [total * w / sum(weights) for w in weights]
    quotas = [int(s) for s in shares]
    by_remainder = sorted(range(len(weights)), key=lambda k: (-(shares[k] - quotas[k]), k))
    for k in by_remainder[: total - sum(quotas)]:
        quotas[k] += 1
    return quotas


class MixtureBatchSampler(ShardedBatchSampler):
    """Training batches drawn from several sources (concatenated: source k holds the indices
    ``offsets[k] .. offsets[k] + sizes[k]``) in proportion to their weights.

    An epoch has as many samples as the sources hold together; source k gives ``quota[k]`` of them,
    its records in a fresh random order, cycled through again where the quota is larger than the
    source (sampling with replacement, each record at most once more than any other), and the sources'
    samples are shuffled together. Everything is drawn from (seed, epoch), so batches are deterministic,
    a resumed run skips exactly the consumed ones, and ranks take their slice of each global batch as
    in ``ShardedBatchSampler``."""

    def __init__(self, sizes: list[int], weights: list[float], batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, multiple_of: int = 1):
        if any(s <= 0 for s in sizes):
            raise ValueError(f"every source needs training records, got sizes {sizes}")
        self.sizes = list(sizes)
        self.offsets = [sum(sizes[:k]) for k in range(len(sizes))]
        self.quotas = source_quotas(sum(sizes), list(weights))
        super().__init__(sum(sizes), batch_size, seed, rank, world_size, shuffle=True, drop_last=True,
                         multiple_of=multiple_of)

    def _order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        parts = []
        for size, quota, offset in zip(self.sizes, self.quotas, self.offsets):
            cycles = -(-quota // size)
            drawn = torch.cat([torch.randperm(size, generator=g) for _ in range(max(cycles, 1))])[:quota]
            parts.append(drawn + offset)
        order = torch.cat(parts)
        return order[torch.randperm(len(order), generator=g)]

"""Class-sharded batch sampling for several processes: each class keeps its K samples on one rank."""
from __future__ import annotations

from typing import Iterable, Iterator, List, Optional, Sequence

import torch

from metricvision.data.samplers import PKSampler


class ShardedBatchSampler(torch.utils.data.Sampler[List[int]]):
    """Splits the global batches of a class-grouped batch sampler over ranks.

    Every rank iterates the same global batch sampler (same seed and epoch) and keeps a
    contiguous slice of whole classes: with global batches of P classes x K samples
    (consecutive), rank r gets classes r * P / W .. (r + 1) * P / W - 1, so all ranks
    see the same batch size and the rank-ordered concatenation of the shards is the
    global batch in its original order (what one process would see).

    Args:
        batch_sampler: yields global batches of P * K indices, K consecutive per class
            (``PKSampler``, a supervision's weighted PK batches); ``set_epoch`` is forwarded.
        k: samples per class K.
        num_replicas: world size W (default: the process group's).
        rank: this rank (default: the process group's).
    """

    def __init__(self, batch_sampler: Iterable[List[int]], k: int, num_replicas: Optional[int] = None, rank: Optional[int] = None) -> None:
        group = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.batch_sampler = batch_sampler
        self.k = k
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if group else 1
        if rank is None:
            rank = torch.distributed.get_rank() if group else 0
        self.num_replicas, self.rank = num_replicas, rank
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank must be in [0, {self.num_replicas}), got {self.rank}")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the wrapped sampler."""
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[List[int]]:
        for batch in self.batch_sampler:
            yield shard_batch(batch, self.k, self.num_replicas, self.rank)


def shard_batch(batch: Sequence[int], k: int, num_replicas: int, rank: int) -> List[int]:
    """This rank's whole classes of a global batch of P classes x K consecutive samples."""
    if len(batch) % k:
        raise ValueError(f"batch of {len(batch)} is not a whole number of classes of k={k}")
    p = len(batch) // k
    if p % num_replicas:
        raise ValueError(f"{p} classes per batch do not split evenly over {num_replicas} ranks; use P divisible by the world size")
    per_rank = p // num_replicas * k
    return list(batch[rank * per_rank : (rank + 1) * per_rank])


class DistributedPKSampler(ShardedBatchSampler):
    """``PKSampler`` of global batch size P * K, sharded by class over the ranks.

    Args:
        labels: (N,) labels of the whole dataset (every rank passes the same).
        batch_size: global batch size P * K.
        k: samples per class.
        seed: base seed (must be equal on all ranks).
        batches_per_epoch: see ``PKSampler``.
        num_replicas / rank: default from the process group.
    """

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        k: int = 4,
        seed: int = 0,
        batches_per_epoch: Optional[int] = None,
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
    ) -> None:
        super().__init__(PKSampler(labels, batch_size, k, seed, batches_per_epoch), k, num_replicas, rank)

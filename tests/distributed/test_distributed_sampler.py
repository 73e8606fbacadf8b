"""The class-sharded PK sampler: whole classes per rank, equal sizes, global batch preserved."""
from __future__ import annotations

import numpy as np
import pytest

from metricvision.data.distributed_sampler import DistributedPKSampler, shard_batch
from metricvision.data.samplers import PKSampler

LABELS = np.repeat(np.arange(12), 6)


@pytest.mark.parametrize("world", [2, 4])
def test_shards_reassemble_the_global_batches_with_whole_classes(world: int) -> None:
    single = PKSampler(LABELS, 16, k=4, seed=3)
    ranks = [DistributedPKSampler(LABELS, 16, k=4, seed=3, num_replicas=world, rank=r) for r in range(world)]
    for s in [single, *ranks]:
        s.set_epoch(2)
    assert all(len(r) == len(single) for r in ranks)
    for global_batch, *shards in zip(single, *ranks):
        assert sum(shards, []) == global_batch
        assert len({len(s) for s in shards}) == 1
        classes = [set(LABELS[s].tolist()) for s in shards]
        for a in range(world):
            for b in range(a + 1, world):
                assert not classes[a] & classes[b]  # a class never straddles ranks
        for s in shards:
            assert all((LABELS[s] == c).sum() == 4 for c in classes[shards.index(s)])


def test_epochs_differ_and_replay() -> None:
    s = DistributedPKSampler(LABELS, 8, k=4, seed=0, num_replicas=2, rank=1)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) != e0
    s.set_epoch(0)
    assert list(s) == e0


def test_uneven_class_split_is_refused() -> None:
    with pytest.raises(ValueError, match="do not split evenly over 2 ranks"):
        shard_batch(list(range(12)), 4, 2, 0)
    with pytest.raises(ValueError, match="rank must be in"):
        DistributedPKSampler(LABELS, 8, k=4, num_replicas=2, rank=2)

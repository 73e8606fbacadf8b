"""Gathered losses in 2 gloo processes equal the single-process loss on the whole batch."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from metricvision.engine.distributed import (
    all_gather,
    all_reduce_mean,
    average_gradients,
    broadcast_module,
    gathered_loss,
    launch_local,
)
from metricvision.index import FlatIndex
from metricvision.losses import create_loss
from metricvision.memory import CrossBatchMemory
from metricvision.supervision.propagation import propagate_labels

pytestmark = pytest.mark.distributed

B, D_IN, D = 6, 12, 8
LABELS = torch.tensor([0, 1, 2, 0, 3, 1, 2, 2, 3, 0, 1, 3])  # 12 = 2 ranks x 6, classes on both ranks


def _setup(name: str, rank: int):
    torch.manual_seed(0)
    x = torch.randn(2 * B, D_IN)
    model = nn.Linear(D_IN, D)
    kw = {"num_classes": 4, "embedding_dim": D} if name == "proxy_anchor" else {}
    torch.manual_seed(1 + rank)  # proxies start different on each rank: broadcast_module must sync them
    loss = create_loss(name, **kw)
    return x, model, loss


def _assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _ddp_gradient_worker(rank: int, world: int, name: str) -> None:
    x, model, loss = _setup(name, rank)
    broadcast_module(loss)
    ref_model, ref_loss = copy.deepcopy(model), copy.deepcopy(loss)
    ref = ref_loss(ref_model(x), LABELS)
    ref.value.backward()

    rows = slice(rank * B, (rank + 1) * B)
    ddp = DistributedDataParallel(model)
    out = gathered_loss(loss, ddp(x[rows]), LABELS[rows])
    out.value.backward()
    average_gradients(loss.parameters())
    for p, q in zip(list(model.parameters()) + list(loss.parameters()), list(ref_model.parameters()) + list(ref_loss.parameters())):
        _assert_close(p.grad, q.grad)
    assert abs(all_reduce_mean(float(out.value)) - float(ref.value)) < 1e-5

    # without the gather the gradient differs: the check above can fail
    model.zero_grad()
    loss(ddp(x[rows]), LABELS[rows]).value.backward()
    assert not torch.allclose(model.weight.grad, ref_model.weight.grad, atol=1e-4)


def _embedding_gradient_worker(rank: int, world: int, name: str, mode: str) -> None:
    x, model, loss = _setup(name, rank)
    broadcast_module(loss)
    with torch.no_grad():
        emb = model(x)
    full = emb.clone().requires_grad_(True)
    copy.deepcopy(loss)(full, LABELS).value.backward()
    rows = slice(rank * B, (rank + 1) * B)
    local = emb[rows].clone().requires_grad_(True)
    gathered_loss(loss, local, LABELS[rows], mode=mode).value.backward()
    # the sum over ranks of the per-rank losses is world x the full-batch loss
    _assert_close(local.grad, world * full.grad[rows])


def _gradient_worker(rank: int, world: int) -> None:
    for name in ("multi_similarity", "proxy_anchor"):
        _ddp_gradient_worker(rank, world, name)
    for name, mode in (("multi_similarity", "rows"), ("multi_similarity", "full"), ("proxy_anchor", "full")):
        _embedding_gradient_worker(rank, world, name, mode)


def test_gathered_gradient_equals_full_batch_gradient() -> None:
    """One spawn runs every case: starting 2 processes costs seconds."""
    launch_local(_gradient_worker, 2)


def _gather_worker(rank: int, world: int) -> None:
    torch.manual_seed(0)
    x = nn.functional.normalize(torch.randn(9, D), dim=1)
    shard = slice(0, 5) if rank == 0 else slice(5, 9)  # uneven shards
    gathered = all_gather(x[shard])
    assert torch.equal(gathered, x)
    index = FlatIndex(D)
    index.add(gathered)
    ref = FlatIndex(D)
    ref.add(x)
    got_s, got_i = index.search(x[shard], 4)
    ref_s, ref_i = ref.search(x, 4)
    assert (got_i == ref_i[shard]).all()
    # a cross-batch memory fed with gathered batches holds what one process would hold
    memory, ref_memory = CrossBatchMemory(16, D), CrossBatchMemory(16, D)
    labels = torch.arange(9) % 3
    memory.enqueue(gathered, all_gather(labels[shard]))
    ref_memory.enqueue(x, labels)
    for got, want in zip(memory.contents(), ref_memory.contents()):
        assert torch.equal(got, want)
    # label propagation on the gathered embeddings equals the single-process one
    partial = torch.tensor([0, -1, 2, -1, 1, -1, -1, 2, 0])
    got_p = propagate_labels(gathered, all_gather(partial[shard]), 3, k=3)
    ref_p = propagate_labels(x, partial, 3, k=3)
    assert torch.equal(got_p.labels, ref_p.labels)
    torch.testing.assert_close(got_p.scores, ref_p.scores)
    # equal batch sizes are required by gathered losses
    with pytest.raises(ValueError, match="same batch size"):
        gathered_loss(create_loss("multi_similarity"), x[shard], torch.zeros(shard.stop - shard.start, dtype=torch.long))


def test_uneven_gather_gives_single_process_knn_graph_memory_and_propagation() -> None:
    launch_local(_gather_worker, 2)

"""torch.distributed helpers: process groups, gathers, and losses over the gathered batch.

Cross-process negatives: every rank all-gathers the embeddings with an autograd-aware
gather, so each rank scores its queries against the references of the whole global
batch. With DDP's gradient averaging the parameter gradients then equal the
single-process gradients on the whole batch (see ``gathered_loss``).
"""
from __future__ import annotations

import os
import socket
from typing import Any, Callable, Iterable, Optional

import torch
import torch.distributed as dist
from torch import nn

from metricvision.losses.base import LossOutput, MetricLoss, ProxyLoss

GATHER_MODES = ("rows", "full")


def is_distributed() -> bool:
    """True inside an initialized process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 outside a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def default_backend() -> str:
    """"nccl" when CUDA is usable, else "gloo" (CPU)."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def init_from_env(backend: Optional[str] = None) -> bool:
    """Join the process group described by torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR/PORT).

    A no-op when the group is already initialized (e.g. by ray.train) or when the
    variables are absent (a plain single process).

    Returns:
        whether this process now belongs to a group of more than one process.
    """
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = backend or default_backend()
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return is_distributed()


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _local_worker(rank: int, fn: Callable[..., Any], world_size: int, port: int, args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size), GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
        # both ranks done before either tears its gloo connections down: a rank that exits
        # while its peer still talks to it aborts ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def launch_local(fn: Callable[..., Any], world_size: int, *args: Any) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned CPU processes (gloo, loopback).

    ``fn`` must be importable (module level). An exception in any process is re-raised here.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    torch.multiprocessing.spawn(_local_worker, args=(fn, world_size, free_port(), args), nprocs=world_size, join=True)


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward all-reduces (sums) the gradient and keeps this rank's rows.

    torch's own autograd gathers use all_to_all / reduce_scatter, which gloo (CPU) lacks
    or aborts on at exit; all_reduce works on every backend.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = (get_rank() * x.shape[0], (get_rank() + 1) * x.shape[0])
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rows[0] : ctx.rows[1]]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's (B, ...) tensor -> (W * B, ...), differentiable.

    The backward pass sums, over ranks, the gradients that reach this rank's rows, so a
    rank's rows receive the gradient of every rank's loss. All ranks must pass the same B.
    """
    if not is_distributed():
        return x
    check_same_size(x.shape[0])
    return _AllGatherWithGrad.apply(x)


@torch.no_grad()
def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's (B_r, ...) tensor in rank order -> (sum B_r, ...), without gradient.

    Ranks may hold different B_r (a shard of an unlabeled set for a kNN graph, the
    last batch of an epoch); used for memory-bank updates and label propagation.
    """
    if not is_distributed():
        return x.detach()
    sizes = _gather_sizes(x.shape[0], x.device)
    padded = x.new_zeros((max(sizes),) + tuple(x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    size = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(size) for _ in range(get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def check_same_size(n: int) -> None:
    """Raise unless every rank holds ``n`` rows (gathered losses need equal batch sizes)."""
    sizes = _gather_sizes(n, _collective_device())
    if len(set(sizes)) > 1:
        raise ValueError(
            f"every rank must see the same batch size, got {sizes} (use drop_last / a distributed PK sampler)"
        )


def global_offset(n: int) -> int:
    """Index of this rank's first row in the gathered batch when every rank holds ``n`` rows."""
    return get_rank() * n


def gathered_loss(
    loss: MetricLoss | nn.Module, embeddings: torch.Tensor, labels: torch.Tensor, mode: Optional[str] = None
) -> LossOutput:
    """The loss of this rank's (B, D) embeddings against the whole global batch.

    Modes (each exact for the losses it names, for every rank holding the same B):

    - ``"rows"`` (default for batch-reference losses): this rank's rows are the queries,
      all gathered rows the references; a query never counts itself (global indices).
      Exact for losses that are a mean over query rows (multi_similarity, ...): the mean
      over ranks of the per-rank values is the full-batch value.
    - ``"full"`` (default for ``ProxyLoss`` and for a loss whose ``gather_mode`` says so, such as
      OLTR's meta-embedding, which takes no references): every rank computes the loss of the
      whole gathered batch. Exact for any loss, including ones that pool over rows per
      column (proxy_anchor), and a loss that updates its own state from the batch (learned
      centroids) updates it alike on every rank.

    In both modes, once DDP averages the encoder gradients over ranks (and
    ``average_gradients`` does the same for the loss's own parameters), every gradient
    equals the single-process gradient of the loss on the whole global batch: the
    gather's backward sums the W ranks' contributions, the average divides by W.

    Args:
        loss: a metric loss, or one wrapped in DistributedDataParallel.
        embeddings: (B, D) this rank's embeddings.
        labels: (B,) this rank's labels.
        mode: "rows", "full" or None (the loss's ``gather_mode``, else by loss type).
    """
    inner = getattr(loss, "module", loss)  # a loss wrapped in DDP (to keep its proxies in sync)
    mode = mode or getattr(inner, "gather_mode", None) or ("full" if isinstance(inner, ProxyLoss) else "rows")
    if mode not in GATHER_MODES:
        raise ValueError(f"mode must be one of {GATHER_MODES}, got '{mode}'")
    if not is_distributed():
        return loss(embeddings, labels)
    if mode == "rows" and isinstance(inner, ProxyLoss):
        check_same_size(embeddings.shape[0])
        return loss(embeddings, labels)
    all_emb = all_gather_with_grad(embeddings)
    all_labels = all_gather(labels)
    if mode == "full":
        return loss(all_emb, all_labels)
    n, start = embeddings.shape[0], global_offset(embeddings.shape[0])
    return loss(
        embeddings, labels, all_emb, all_labels,
        query_ids=torch.arange(start, start + n, device=labels.device),
        reference_ids=torch.arange(all_emb.shape[0], device=labels.device),
    )


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy ``src``'s parameters and buffers to every rank (e.g. proxies initialized per rank)."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Average gradients over ranks, as DDP does for the model; for parameters outside DDP (proxies)."""
    if not is_distributed():
        return
    world = get_world_size()
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)


def all_reduce_mean(value: float) -> float:
    """Mean of a scalar over ranks (for logging a loss or a metric once)."""
    if not is_distributed():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t) / get_world_size()

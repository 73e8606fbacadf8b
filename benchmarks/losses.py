"""Speed and memory of every loss against its pytorch-metric-learning twin, same inputs.

    python benchmarks/losses.py [--batch 256 --dim 512 --classes 64 --repeats 10 --device cpu]

For each loss: median forward+backward wall time over ``--repeats`` runs (after a
warm-up, ours and theirs interleaved) and the peak of live tensor memory during one
forward+backward. Peak memory is measured with the torch profiler's allocation events
(``profile_memory=True``): every tensor allocation and free made by torch inside the
step is replayed in time order and the running total's maximum is reported. That counts
what the step allocates (intermediates, autograd buffers, gradients), not the inputs,
and unlike tracemalloc or RSS it sees the C++ allocator. On CUDA,
torch.cuda.max_memory_allocated is used instead. Ratios are ours / theirs (< 1: we win).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Callable, List, Tuple

import torch
from pytorch_metric_learning import distances, losses as pml, miners as pml_miners
from torch.profiler import ProfilerActivity, profile

from metricvision.losses import create_loss, create_miner

Step = Callable[[torch.Tensor], torch.Tensor]
COS = distances.CosineSimilarity


def peak_bytes(step: Step, x: torch.Tensor) -> int:
    """Peak of live tensor bytes allocated during one forward+backward."""
    if x.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(x).backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(x).backward()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def seconds(step: Step, x: torch.Tensor) -> float:
    start = time.perf_counter()
    step(x).backward()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def cases(C: int, D: int) -> List[Tuple[str, Callable[[], Tuple[Step, Step]]]]:
    """(label, builder) pairs; a builder returns (ours, theirs) steps on the same inputs."""

    def pair(name: str, kw: dict, theirs: Callable[[], torch.nn.Module], miner=None, their_miner=None):
        def build(y):
            ours = create_loss(name, miner=miner() if miner else None, **kw).to(y.device)
            ref = theirs().to(y.device)
            if their_miner is None:
                return (lambda x: ours(x, y).value), (lambda x: ref(x, y))
            m = their_miner()
            return (lambda x: ours(x, y).value), (lambda x: ref(x, y, m(x.detach(), y)))
        return build

    def proxy(name: str, kw: dict, theirs: Callable[[], torch.nn.Module], attr: str, transpose: bool):
        def build(y):
            ours = create_loss(name, num_classes=C, embedding_dim=D, **kw).to(y.device)
            ref = theirs().to(y.device)
            with torch.no_grad():
                getattr(ref, attr).copy_(ours.proxies.T if transpose else ours.proxies)
            return (lambda x: ours(x, y).value), (lambda x: ref(x, y))
        return build

    def xbm(name: str, kw: dict, theirs: Callable[[], torch.nn.Module]):
        def build(y):
            ours = create_loss("xbm", loss=name, loss_kwargs=kw, memory_size=4096, embedding_dim=D).to(y.device)
            ref = pml.CrossBatchMemory(theirs(), embedding_size=D, memory_size=4096).to(y.device)
            return (lambda x: ours(x, y).value), (lambda x: ref(x, y))
        return build

    deg = math.degrees
    return [
        ("contrastive", pair("contrastive", {}, lambda: pml.ContrastiveLoss(pos_margin=1.0, neg_margin=0.5, distance=COS()))),
        ("triplet", pair("triplet", dict(margin=0.1), lambda: pml.TripletMarginLoss(margin=0.1, distance=COS()))),
        ("lifted_structure", pair("lifted_structure", {}, lambda: pml.LiftedStructureLoss(neg_margin=1.0, distance=COS()))),
        ("ntxent", pair("ntxent", dict(temperature=0.07), lambda: pml.NTXentLoss(temperature=0.07))),
        ("supcon", pair("supcon", {}, lambda: pml.SupConLoss(temperature=0.1))),
        ("multi_similarity", pair("multi_similarity", {}, lambda: pml.MultiSimilarityLoss())),
        ("circle", pair("circle", {}, lambda: pml.CircleLoss())),
        ("margin", pair("margin", {}, lambda: pml.MarginLoss())),
        ("fastap", pair("fastap", {}, lambda: pml.FastAPLoss())),
        ("smooth_ap", pair("smooth_ap", {}, lambda: pml.SmoothAPLoss())),
        ("normalized_softmax", proxy("normalized_softmax", {}, lambda: pml.NormalizedSoftmaxLoss(C, D), "W", True)),
        ("cosface", proxy("cosface", {}, lambda: pml.CosFaceLoss(C, D), "W", True)),
        ("arcface", proxy("arcface", {}, lambda: pml.ArcFaceLoss(C, D, margin=deg(0.5)), "W", True)),
        ("subcenter_arcface", proxy("subcenter_arcface", {}, lambda: pml.SubCenterArcFaceLoss(num_classes=C, embedding_size=D, margin=deg(0.5)), "W", True)),
        ("soft_triple", proxy("soft_triple", {}, lambda: pml.SoftTripleLoss(C, D), "fc", True)),
        ("proxy_nca", proxy("proxy_nca", {}, lambda: pml.ProxyNCALoss(C, D), "proxies", False)),
        ("proxy_anchor", proxy("proxy_anchor", {}, lambda: pml.ProxyAnchorLoss(C, D), "proxies", False)),
        ("triplet + batch_hard", pair("triplet", dict(margin=0.1), lambda: pml.TripletMarginLoss(margin=0.1, distance=COS()),
                                      lambda: create_miner("batch_hard"), lambda: pml_miners.BatchHardMiner(distance=COS()))),
        ("triplet + semihard", pair("triplet", dict(margin=0.2), lambda: pml.TripletMarginLoss(margin=0.2, distance=COS()),
                                    lambda: create_miner("semihard", margin=0.2),
                                    lambda: pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard", distance=COS()))),
        ("multi_similarity + miner", pair("multi_similarity", {}, lambda: pml.MultiSimilarityLoss(),
                                          lambda: create_miner("multi_similarity"), lambda: pml_miners.MultiSimilarityMiner())),
        ("xbm(contrastive), 4096", xbm("contrastive", {}, lambda: pml.ContrastiveLoss(pos_margin=1.0, neg_margin=0.5, distance=COS()))),
        ("xbm(multi_similarity), 4096", xbm("multi_similarity", {}, lambda: pml.MultiSimilarityLoss())),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", default=None, help="comma-separated case labels")
    args = ap.parse_args()
    torch.manual_seed(0)
    per_class = args.batch // args.classes
    # sorted labels: PML's Smooth-AP requires equal class sizes in contiguous blocks
    y = torch.arange(args.classes).repeat_interleave(per_class).to(args.device)
    x0 = torch.nn.functional.normalize(torch.randn(len(y), args.dim, device=args.device), dim=1)
    print(f"batch {len(y)} ({args.classes} classes x {per_class}), dim {args.dim}, {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'loss':30s} {'ours ms':>9s} {'pml ms':>9s} {'time':>6s} {'ours MiB':>9s} {'pml MiB':>9s} {'memory':>7s}")
    only = set(args.only.split(",")) if args.only else None
    for label, build in cases(args.classes, args.dim):
        if only and label not in only:
            continue
        ours, theirs = build(y)
        x = x0.clone().requires_grad_(True)
        for step in (ours, theirs):
            seconds(step, x)  # warm-up (and fills memories)
        t_ours, t_theirs = [], []
        for _ in range(args.repeats):
            t_ours.append(seconds(ours, x))
            t_theirs.append(seconds(theirs, x))
        m_ours, m_theirs = peak_bytes(ours, x), peak_bytes(theirs, x)
        a, b = statistics.median(t_ours) * 1e3, statistics.median(t_theirs) * 1e3
        print(f"{label:30s} {a:9.2f} {b:9.2f} {a / b:6.2f} {m_ours / 2**20:9.1f} {m_theirs / 2**20:9.1f} "
              f"{m_ours / max(m_theirs, 1):7.2f}", flush=True)


if __name__ == "__main__":
    main()

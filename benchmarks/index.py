"""Index benchmark: build time, query latency and recall@10 of each index type against exact search.

Synthetic clustered data (unit vectors around 1024 random centers, dim 128 like SIFT-sized
global descriptors), inner-product metric. For every database size and index type it
reports build time (train + add), p50/p95 latency of single queries and of query batches,
and recall@10 against exact search (our FlatIndex). faiss IndexFlatIP runs as the peer
of our FlatIndex; the last column is our FlatIndex's batch p50 divided by the row's.

OMP_WAIT_POLICY defaults to PASSIVE here: torch's and faiss's OpenMP pools otherwise
spin against each other on few cores. HNSW is built on at most --hnsw-max vectors (its build dominates on 2 cores); its row says
on how many, and its recall is against exact search over that same subset.

    python benchmarks/index.py                      # 100k and 1M
    python benchmarks/index.py --sizes 20000 --queries 200 --single 50   # quick look
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import time

# torch and faiss each bring an OpenMP pool; busy-waiting threads of one starve the other
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

from metricvision.index import FlatIndex, Index, create_index
from metricvision.index.faiss_index import import_faiss

K = 10
SPECS: List[Tuple[str, str, str | None]] = [  # (row name, create_index spec, faiss params)
    ("FlatIndex (ours, torch)", "flat", None),
    ("faiss IndexFlatIP (peer)", "faiss:Flat", None),
    ("faiss HNSW32", "HNSW32", "efSearch=64"),
    ("faiss IVF1024,Flat", "IVF1024,Flat", "nprobe=16"),
    ("faiss IVF1024,PQ32", "IVF1024,PQ32", "nprobe=16"),
]


def clustered(n: int, dim: int, centers: np.ndarray, seed: int, noise: float = 0.6, chunk: int = 200_000) -> np.ndarray:
    """(n, dim) float32 unit vectors: a random center plus Gaussian noise of norm ~noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = centers[rng.integers(0, len(centers), m)] + rng.standard_normal((m, dim), dtype=np.float32) * (noise / np.sqrt(dim))
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def percentiles_ms(times: List[float]) -> Tuple[float, float]:
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 95) * 1e3)


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(index: Index, x: np.ndarray, q: np.ndarray, truth: np.ndarray, single: int, batch: int) -> Dict[str, float]:
    build = timed(lambda: index.add(x))
    index.search(q[:1], K)  # warm-up
    single_t = [timed(lambda i=i: index.search(q[i : i + 1], K)) for i in range(single)]
    found, batch_t = [], []
    for s in range(0, len(q), batch):
        t = time.perf_counter()
        found.append(index.search(q[s : s + batch], K)[1])
        batch_t.append(time.perf_counter() - t)
    ids = np.concatenate(found)
    recall = float(np.mean([np.isin(a, b).sum() / K for a, b in zip(ids, truth)]))
    (s50, s95), (b50, b95) = percentiles_ms(single_t), percentiles_ms(batch_t)
    return {"n": len(x), "build_s": build, "single_p50_ms": s50, "single_p95_ms": s95, "batch_p50_ms": b50, "batch_p95_ms": b95, "recall@10": recall}


def exact_truth(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    ref = FlatIndex(x.shape[1])
    ref.add(x)
    return ref.search(q, K)[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=1000, help="queries for recall and batch latency")
    p.add_argument("--single", type=int, default=200, help="single queries timed")
    p.add_argument("--batch", type=int, default=100, help="queries per batch")
    p.add_argument("--hnsw-max", type=int, default=250_000, help="HNSW is built on at most this many vectors")
    p.add_argument("--json", action="store_true", help="print the rows as JSON too")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for torch and faiss alike")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import_faiss().omp_set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((1024, args.dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    q = clustered(args.queries, args.dim, centers, seed=1)
    print(f"# threads {args.threads} (torch and faiss), dim {args.dim}, {args.queries} queries, batch {args.batch}, k {K}")
    header = "| vectors | index | built on | build s | single p50 ms | single p95 ms | batch p50 ms | batch p95 ms | recall@10 | batch speed vs FlatIndex |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    rows = []
    for n in args.sizes:
        x = clustered(n, args.dim, centers, seed=2)
        truth = exact_truth(x, q)
        ours_batch = None
        for name, spec, params in SPECS:
            sub = x[: args.hnsw_max] if spec.startswith("HNSW") and n > args.hnsw_max else x
            sub_truth = truth if len(sub) == n else exact_truth(sub, q)
            index = create_index(spec, args.dim, "ip", params)
            r = measure(index, sub, q, sub_truth, args.single, args.batch)
            del index
            gc.collect()
            ours_batch = r["batch_p50_ms"] if ours_batch is None else ours_batch
            r.update(vectors=n, index=name + (f" ({params})" if params else ""), speed=ours_batch / r["batch_p50_ms"])
            rows.append(r)
            line = (f"| {n:,} | {r['index']} | {r['n']:,} | {r['build_s']:.1f} | {r['single_p50_ms']:.2f} | {r['single_p95_ms']:.2f} | "
                    f"{r['batch_p50_ms']:.1f} | {r['batch_p95_ms']:.1f} | {r['recall@10']:.3f} | {r['speed']:.2f}x |")
            lines.append(line)
            print(line, flush=True)
        del x
        gc.collect()
    print("\n" + "\n".join(lines))
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

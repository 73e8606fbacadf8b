"""Evaluation speed and memory: metricvision vs pytorch-metric-learning's AccuracyCalculator.

Both compute P@1, R-Precision and MAP@R (k = largest class, leave-one-out) on the same
synthetic clustered L2-normalized embeddings. Each run happens in its own subprocess that
loads the embeddings from .npy files, resets the kernel's peak-RSS counter (clear_refs 5),
evaluates, and reports wall time and peak RSS growth (VmHWM - RSS after loading). RSS
counts every allocation (numpy, torch, faiss, OpenMP buffers), which tracemalloc would not.

    python benchmarks/evaluation.py                      # 100k and 300k vs PML, 1M ours only
    python benchmarks/evaluation.py --sizes 20000 --ours-only-sizes ""   # quick run
    python benchmarks/evaluation.py --sizes "" --ours-only-sizes 100000,1000000 --index IVF4096,Flat
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RUNNER = r"""
import json, sys, time
import numpy as np
import torch

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0

which, xpath, ypath, spec, params = sys.argv[1:6]
x, y = np.load(xpath), np.load(ypath)
if which == "pml":
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
else:
    from metricvision.metrics import evaluate_retrieval
try:
    open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
except OSError:
    pass
base = rss("VmRSS:")
t0 = time.perf_counter()
if which == "pml":
    calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                              k="max_bin_count", device=torch.device("cpu"))
    r = calc.get_accuracy(xt, yt)
    out = {"precision@1": r["precision_at_1"], "r_precision": r["r_precision"], "map@r": r["mean_average_precision_at_r"]}
else:
    index = None
    if spec != "exact":
        from metricvision.index.factory import create_index
        index = create_index(spec, x.shape[1], "ip", params=params)
    r = evaluate_retrieval(x, y, ks=(1,), clustering=False, index=index)
    out = {k: r[k] for k in ("precision@1", "r_precision", "map@r")}
out["seconds"] = time.perf_counter() - t0
out["peak_mb"] = (rss("VmHWM:") - base) / 2**20
print(json.dumps({k: float(v) for k, v in out.items()}))
"""


def make_data(n: int, dim: int, per_class: int, noise: float = 2.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 unit vectors around n // per_class Gaussian class centres (noise / centre scale)."""
    rng = np.random.default_rng(seed)
    classes = max(2, n // per_class)
    y = rng.integers(0, classes, n)
    x = rng.standard_normal((classes, dim), dtype=np.float32)[y]
    x += noise * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, y.astype(np.int64)


def run(which: str, x: np.ndarray, y: np.ndarray, tmp: Path, timeout: float, spec: str = "exact", params: str = "") -> dict:
    np.save(tmp / "x.npy", x)
    np.save(tmp / "y.npy", y)
    proc = subprocess.run([sys.executable, "-c", RUNNER, which, str(tmp / "x.npy"), str(tmp / "y.npy"), spec, params],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{which} run failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,300000", help="comma-separated N compared with PML")
    p.add_argument("--ours-only-sizes", default="1000000", help="comma-separated N run by metricvision only")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--per-class", type=int, default=100, help="mean class size (k = largest class)")
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds allowed per run")
    p.add_argument("--index", default="exact", help='our index for the --ours-only-sizes runs: "exact" (symmetric self_knn) or a faiss spec, e.g. "IVF4096,Flat"')
    p.add_argument("--index-params", default="nprobe=32", help="faiss search parameters for --index")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    ours_only = [int(s) for s in args.ours_only_sizes.split(",") if s]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in sizes + ours_only:
            x, y = make_data(n, args.dim, args.per_class)
            spec = args.index if n in ours_only else "exact"
            ours = run("ours", x, y, Path(d), args.timeout, spec, args.index_params)
            peer = run("pml", x, y, Path(d), args.timeout) if n in sizes else None
            rows.append((n, ours, peer))
            print(json.dumps({"n": n, "ours": ours, "pml": peer}), flush=True)
    print(f"\nN x {args.dim}, mean class size {args.per_class}, k = largest class; wall seconds and peak RSS growth (MB)\n")
    print("| N | ours s | PML s | time ratio | ours MB | PML MB | memory ratio | max abs diff (P@1, R-P, MAP@R) |")
    print("|---|---|---|---|---|---|---|---|")
    for n, ours, peer in rows:
        if peer is None:
            print(f"| {n:,} | {ours['seconds']:.1f} | - | - | {ours['peak_mb']:.0f} | - | - | - |")
            continue
        diff = max(abs(ours[k] - peer[k]) for k in ("precision@1", "r_precision", "map@r"))
        print(f"| {n:,} | {ours['seconds']:.1f} | {peer['seconds']:.1f} | {ours['seconds'] / peer['seconds']:.2f} | "
              f"{ours['peak_mb']:.0f} | {peer['peak_mb']:.0f} | {ours['peak_mb'] / max(peer['peak_mb'], 1e-9):.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()

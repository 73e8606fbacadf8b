"""Exact leave-one-out k-NN of a set against itself, each pair of blocks scored once.

Leave-one-out evaluation searches every item against all the others. The score matrix is
symmetric, so block (i, j) serves the rows of block i (row-wise) and those of block j
(column-wise): half the matmuls of a search through an index. Blocks are scored in
bfloat16 where the CPU multiplies it faster (AVX512-BF16 / AMX); compiled scans
(``knn_scan``) keep every entry within a proven error band of each row's running k-th best,
and those candidates are re-scored in float32, so the neighbours equal a float32
brute-force search up to float32 rounding.

Order of work: the diagonal blocks first (each row's first lower bound of its k-th best
comes from its own block), then row block i against every later block j; after that sweep
block i has met every other block, so its rows are final and are yielded while later rows
still collect candidates. Memory: one (B, B) block plus about k + 128 candidates per row,
O(N k), never N x N.
"""
from __future__ import annotations

import functools
import time
from typing import Iterator, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from metricvision.index import knn_scan
from metricvision.index.base import check_finite

PRECISIONS = ("auto", "bf16", "fp32")
_SEED_GROUP = 16  # columns per group maximum in the diagonal block's first lower bound


@functools.lru_cache(maxsize=None)
def bf16_matmul_pays() -> bool:
    """Does this CPU multiply bfloat16 at least 1.3x faster than float32, rounding each
    result to nearest (the error bound assumes it)? Checked once, ~20 ms."""
    a = torch.randn(1024, 128)
    b = torch.cat([a, a]) + torch.randn(2048, 128)  # half the pairs correlated: large scores
    seconds = {}
    for dt in (torch.float32, torch.bfloat16):
        x, y = a.to(dt), b.to(dt)
        x @ y.T
        t = time.perf_counter()
        for _ in range(3):
            x @ y.T
        seconds[dt] = time.perf_counter() - t
    ab, bb = a.bfloat16(), b.bfloat16()
    exact = ab.double() @ bb.double().T
    big = exact.abs() >= 0.25 * ab.double().norm(dim=1)[:, None] * bb.double().norm(dim=1)[None]
    # where |score| >= |a||b| / 4, float32 accumulation adds < 4 D 2**-24 relative: the rest
    # of any error above 2**-8 would be the result's rounding
    rel = ((ab @ bb.T).double() - exact).abs()[big] / exact.abs()[big]
    nearest = bool((rel <= 2.0**-8 + 4 * 128 * 2.0**-24).all())
    return nearest and seconds[torch.bfloat16] * 1.3 < seconds[torch.float32]


def self_knn(
    x: torch.Tensor | np.ndarray, k: int, block: int = 4096, precision: str = "auto", progress: Optional[bool] = None,
    ids: Optional[np.ndarray] = None,
) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
    """Top-k inner-product neighbours of every row of ``x`` among the other rows.

    Equal scores are ordered by id, as a stable sort of the items in id order (and faiss)
    orders them, whatever the order of the rows: a caller that reorders the rows for speed
    passes their original indices as ``ids`` and gets the same neighbours.

    Args:
        x: (N, D) float32 vectors.
        k: neighbours per row (at most N - 1 are found; the rest are -inf / -1).
        block: rows per block (B x B scores are held; a first lower bound of the k-th best
            comes from the diagonal block when B >= 16 k).
        precision: "bf16" (bfloat16 scoring + float32 re-scoring), "fp32" (float32 scoring,
            rounded to bfloat16 for the scans), or "auto" (bf16 when ``bf16_matmul_pays``).
        progress: a progress bar over the block pairs (stderr); None shows it from 100 pairs on
            (N above ~55k at B = 4096).
        ids: (N,) distinct int64 id of each row, reported for its neighbours and breaking ties;
            default 0 .. N - 1.

    Yields:
        (start, scores (b, k) float32, ids (b, k) int64) for consecutive row blocks, in order.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got '{precision}'")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    x = torch.as_tensor(x, dtype=torch.float32).cpu().contiguous()
    check_finite(x.numpy())
    n, dim = x.shape
    ids = np.arange(n, dtype=np.int64) if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape != (n,):
        raise ValueError(f"ids must have one entry per row, shape ({n},), got {ids.shape}")
    kk = min(k, n - 1)
    dt = torch.bfloat16 if precision == "bf16" or (precision == "auto" and bf16_matmul_pays()) else torch.float32
    if kk < 1:
        for s0 in range(0, n, block):
            b = min(block, n - s0)
            yield s0, np.full((b, k), -np.inf, np.float32), np.full((b, k), -1, np.int64)
        return
    block = -(-min(block, n) // 64) * 64
    xb = torch.cat([x, torch.zeros(-n % 64, dim)]).to(dt)  # whole groups; padding is never read
    band = _input_error_band(x, xb[:n].float())
    lists = _Lists(n, kk, band)
    xn = x.numpy()
    buf = torch.empty(block * block, dtype=dt)
    starts = list(range(0, n, block))

    def scan(i: int, j: int) -> None:
        a, b = xb[starts[i] : starts[i] + block], xb[starts[j] : starts[j] + block]
        s = buf[: len(a) * len(b)].view(len(a), len(b))
        torch.mm(a, b.T, out=s)
        if i == j:
            s.diagonal().fill_(-float("inf"))
        bits = s.bfloat16().view(torch.int16) if dt != torch.bfloat16 else s.view(torch.int16)
        rows, cols = min(len(a), n - starts[i]), min(len(b), n - starts[j])
        if i == j and cols // _SEED_GROUP >= kk:
            # kk groups of _SEED_GROUP columns each hold a score >= their maximum, so the kk-th
            # best group maximum is a lower bound of the kk-th best score: a first tau
            # (the raw int16 maximum of a group is one of its values, a negative one at worst)
            reps = bits[:rows, : cols - cols % _SEED_GROUP].reshape(rows, -1, _SEED_GROUP).amax(-1)
            knn_scan.seed_tau(starts[i], reps.numpy(), kk, lists.tau)
            knn_scan.compact_rows(starts[i], rows, kk, *lists.state())
        lists.scan(knn_scan.scan_rows, bits.numpy(), starts[i], starts[j], rows, cols, starts[i], rows)
        if i != j:
            lists.scan(knn_scan.scan_cols, bits.numpy(), starts[i], starts[j], rows, cols, starts[j], cols)

    pairs = len(starts) * (len(starts) + 1) // 2
    bar = tqdm(total=pairs, desc="exact kNN (block pairs)", disable=not (pairs >= 100 if progress is None else progress))
    for i in range(len(starts)):  # first each block against itself: every row gets a first tau
        scan(i, i)
        bar.update()
    for i, s0 in enumerate(starts):
        for j in range(i + 1, len(starts)):
            scan(i, j)
            bar.update()
        rows = min(block, n - s0)
        knn_scan.compact_rows(s0, rows, kk, *lists.state())
        best_s, best_i = knn_scan.rescore_rows(xn, s0, rows, kk, lists.cid, lists.fill, ids)
        out_s = np.full((rows, k), -np.inf, np.float32)
        out_i = np.full((rows, k), -1, np.int64)
        out_s[:, :kk], out_i[:, :kk] = best_s, best_i
        yield s0, out_s, out_i
    bar.close()


def _input_error_band(x: torch.Tensor, xr: torch.Tensor) -> np.ndarray:
    """(N,) float32 2 E_i: E_i bounds |x_i.x_j - (computed x~_i.x~_j)| for every j before the
    result is rounded, from the rounded vectors x~ = ``xr`` and their residuals e = x - x~:
    |x~_i||e_j| + |e_i||x~_j| + |e_i||e_j| (Cauchy-Schwarz) + D 2**-24 |x~_i||x~_j| (float32
    accumulation). The rounding of the result itself is the relative term REL_ROUND."""
    e, nr = (x - xr).norm(dim=1).double(), xr.norm(dim=1).double()
    err = nr * e.max() + e * nr.max() + e * e.max() + x.shape[1] * 2.0**-24 * nr * nr.max()
    return (2 * err * (1 + 2.0**-7) + 1e-7).float().numpy()


class _Lists:
    """Every row's candidate list: keys (N, W) int16, ids (N, W) int32, fill, tau, threshold."""

    def __init__(self, n: int, kk: int, band: np.ndarray) -> None:
        self.kk, self.band, self.lut = kk, band.astype(np.float32), knn_scan.key_lut()
        width = kk + 128
        self.ckey = np.empty((n, width), np.int16)
        self.cid = np.empty((n, width), np.int32)
        self.fill = np.zeros(n, np.int32)
        self.tau = np.full(n, knn_scan.NEG_INF_KEY, np.int32)
        self.thr = np.full(n, knn_scan.NEG_INF_KEY + 1, np.int32)
        self.pos = np.zeros(n, np.int64)

    def state(self) -> tuple:
        return self.ckey, self.cid, self.fill, self.tau, self.thr, self.band, self.lut

    def scan(self, kernel, bits: np.ndarray, row0: int, col0: int, rows: int, cols: int, store0: int, served: int) -> None:
        """Run a scan over one block; widen the lists and resume while some list overflows."""
        self.pos[store0 : store0 + served] = 0
        while kernel(bits, row0, col0, rows, cols, self.pos, self.kk, *self.state()):
            extra = max(64, self.ckey.shape[1] // 2)  # every row grows: by half, not double
            self.ckey = np.concatenate([self.ckey, np.empty((len(self.ckey), extra), np.int16)], 1)
            self.cid = np.concatenate([self.cid, np.empty((len(self.cid), extra), self.cid.dtype)], 1)

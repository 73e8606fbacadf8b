"""Threshold filtering of bfloat16 score blocks in torch, for FlatIndex(prefilter="bf16").

A search that scores in bfloat16 keeps, per query, every vector whose approximate score lies
within ``band`` (twice the proven rounding error) of a running lower bound ``tau`` of the
query's k-th best approximate score; the survivors are re-scored in float32 afterwards, so
the result equals a float32 brute-force search (up to float32 rounding). ``self_knn`` does
the same for leave-one-out search with compiled scans (``knn_scan``).
"""
from __future__ import annotations

from typing import Tuple

import torch

# bfloat16 has 8 significant bits, so unit roundoff u = 2**-8. Rounding q and x (2u + u^2)
# and the bfloat16 result (u (1 + 2u + u^2)) bound |approx - q.x| by ~3.02 u |q| |x|; the
# float32 accumulation adds D * 2**-24 |q| |x|, covered by the extra 0.03 u for D < 2**10.
BF16_REL_ERR = 3.05 * 2.0**-8

Survivors = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _int_threshold(thr: torch.Tensor) -> torch.Tensor:
    """bfloat16 thresholds as the int16 view of their bits. For positive floats the int order
    is the float order; a threshold <= 0 becomes the int minimum (every group passes)."""
    return torch.where(thr > 0, thr.view(torch.int16), torch.iinfo(torch.int16).min)


def row_survivors(s: torch.Tensor, thr: torch.Tensor, g: int) -> Survivors:
    """Entries with ``s[r, c] >= thr[r]`` of a (B, C) bfloat16 block, C a multiple of ``g``.

    Group maxima over ``g`` neighbouring columns (one pass over the int view; the max of a
    group with negative values is still one of its values) pick the groups worth reading.

    Returns:
        rows (n,), cols (n,), values (n,) bfloat16.
    """
    groups = s.view(s.shape[0], -1, g)
    gmax = groups.view(torch.int16).amax(-1)
    rows, gid = (gmax >= _int_threshold(thr)[:, None]).nonzero(as_tuple=True)
    vals = groups[rows, gid]
    hit, j = (vals >= thr[rows][:, None]).nonzero(as_tuple=True)
    return rows[hit], gid[hit] * g + j, vals[hit, j]


def kth_lower_bound(s: torch.Tensor, kk: int, g: int) -> torch.Tensor:
    """(B,) lower bound of each row's kk-th best entry of a (B, C) bfloat16 block: the kk-th best
    group maximum (kk groups each hold a value >= it), or the kk-th best entry when groups are few."""
    if s.shape[1] // g >= kk:
        gmax = s.view(s.shape[0], -1, g).view(torch.int16).amax(-1).view(torch.bfloat16)
        return gmax.float().topk(kk, dim=1).values[:, -1]
    if s.shape[1] >= kk:
        return s.float().topk(kk, dim=1).values[:, -1]
    return torch.full((s.shape[0],), -float("inf"))


class Candidates:
    """Per-query candidate lists (dense, -inf padded) whose approximate score is >= tau - band.

    tau is a lower bound of each query's approximate k-th best score; it only rises, and
    every true top-k vector has an approximate score >= tau - band, so none is ever dropped.
    """

    def __init__(self, nq: int, kk: int, band: torch.Tensor) -> None:
        self.kk, self.band = kk, band
        self.tau = torch.full((nq,), -float("inf"))
        self.scores = torch.full((nq, 0), -float("inf"))
        self.ids = torch.full((nq, 0), -1, dtype=torch.int64)
        self.fill = torch.zeros(nq, dtype=torch.int64)

    def raise_tau(self, kth: torch.Tensor) -> None:
        self.tau = torch.maximum(self.tau, kth)

    def threshold_bf16(self) -> torch.Tensor:
        """tau - band rounded down to bfloat16, so comparing in bfloat16 keeps a superset."""
        t = self.tau - self.band
        return (t - t.abs() * 2.0**-7).bfloat16()

    def append(self, rows: torch.Tensor, ids: torch.Tensor, scores: torch.Tensor) -> None:
        """Add (n,) candidates; ``rows`` must be sorted (as ``nonzero`` returns them)."""
        if rows.numel() == 0:
            return
        counts = torch.bincount(rows, minlength=len(self.fill))
        if int((self.fill + counts).max()) > self.scores.shape[1]:
            self.compact()
            # head room, so that the next blocks append without compacting again
            self._widen(max(int((self.fill + counts).max()), 2 * self.scores.shape[1], 2 * self.kk))
        starts = torch.cumsum(counts, 0) - counts
        pos = self.fill[rows] + torch.arange(len(rows)) - starts[rows]
        self.scores[rows, pos] = scores
        self.ids[rows, pos] = ids
        self.fill += counts

    def compact(self) -> None:
        """Raise tau to each row's k-th best candidate and drop candidates below tau - band."""
        if self.scores.shape[1] >= self.kk:
            self.raise_tau(self.scores.topk(self.kk, dim=1).values[:, -1])
        scores, order = self.scores.sort(dim=1, descending=True)
        keep = scores >= (self.tau - self.band)[:, None]
        self.fill = keep.sum(1)
        width = int(self.fill.max()) if len(self.fill) else 0
        self.scores = scores[:, :width].masked_fill(~keep[:, :width], -float("inf"))
        self.ids = self.ids.gather(1, order[:, :width])

    def _widen(self, width: int) -> None:
        extra = width - self.scores.shape[1]
        if extra <= 0:
            return
        self.scores = torch.cat([self.scores, torch.full((len(self.fill), extra), -float("inf"))], 1)
        self.ids = torch.cat([self.ids, torch.full((len(self.fill), extra), -1, dtype=torch.int64)], 1)


def rescore(q: torch.Tensor, x: torch.Tensor, cand: torch.Tensor, valid: torch.Tensor, kk: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Float32 inner products of (B, D) queries with their (B, W) candidate rows of (N, D)
    ``x`` (invalid entries masked), then each row's top-kk -> (scores (B, kk), ids (B, kk))."""
    out_s = torch.empty(q.shape[0], kk)
    out_i = torch.empty(q.shape[0], kk, dtype=torch.int64)
    rows = max(1, (1 << 23) // max(1, cand.shape[1] * x.shape[1]))
    for r in range(0, q.shape[0], rows):
        c = cand[r : r + rows]
        vecs = torch.index_select(x, 0, c.clamp_min(0).flatten()).view(*c.shape, x.shape[1])
        exact = torch.bmm(vecs, q[r : r + rows, :, None]).squeeze(-1)
        exact.masked_fill_(~valid[r : r + rows], -float("inf"))
        out_s[r : r + rows], j = exact.topk(kk, dim=1)
        out_i[r : r + rows] = c.gather(1, j)
    return out_s, out_i

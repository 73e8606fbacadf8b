"""SegmentedIndex: a large base index, small delta segments and a tombstone set, searched as one.

Writes append a small segment instead of rewriting the base; deletions are tombstones
(ids hidden at search time). Each part is searched for ``k + len(tombstones)`` results, so
that dropping the tombstoned ones still leaves the part's top-k, and the parts' lists are
merged by score. Filters go to each part's own filtered search (a faiss ID selector, or the
FlatIndex's scoring of only the allowed rows), with the tombstones taken out of the allowed set.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from metricvision.index.base import ArrayLike, Index, as_float32
from metricvision.index.filtered import filtered_search
from metricvision.index.sharded import merge_topk

Result = Tuple[np.ndarray, np.ndarray]


class SegmentedIndex:
    """A read-only view of ``base`` plus ``segments`` minus ``tombstones``.

    Args:
        base: the large index (any Index).
        segments: small indexes holding ids that are not in ``base``.
        tombstones: (T,) ids deleted from base or segments.
    """

    def __init__(self, base: Index, segments: Sequence[Index] = (), tombstones: ArrayLike = ()) -> None:
        self.base, self.segments = base, list(segments)
        self.tombstones = np.unique(np.asarray(tombstones, dtype=np.int64))
        self.dim = base.dim
        for seg in self.segments:
            if seg.dim != self.dim:
                raise ValueError(f"segment dimension {seg.dim} differs from the base index's {self.dim}")

    @property
    def parts(self) -> List[Index]:
        """The base followed by the segments."""
        return [self.base, *self.segments]

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts) - int(self.tombstones.size)

    def _merge(self, results: List[Result], nq: int, k: int) -> Result:
        if not results:
            return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
        return merge_topk(results, k)

    def search(self, q: ArrayLike, k: int) -> Result:
        """Top-k of (Q, D) queries over all parts -> (scores (Q, k) float32, ids (Q, k) int64), -inf / -1 padded."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        qa = as_float32(q, self.dim, "queries")
        fetch, results = k + int(self.tombstones.size), []
        for part in self.parts:
            if len(part) == 0:
                continue
            s, i = part.search(qa, fetch)
            if self.tombstones.size:
                dead = np.isin(i, self.tombstones)
                s, i = np.where(dead, -np.inf, s).astype(np.float32), np.where(dead, -1, i)
            results.append((s, i))
        return self._merge(results, qa.shape[0], k)

    def search_allowed(self, q: ArrayLike, k: int, allowed: ArrayLike) -> Result:
        """Top-k of (Q, D) queries among (n,) allowed ids, each part filtering inside its own search."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        qa = as_float32(q, self.dim, "queries")
        keep = np.setdiff1d(np.asarray(allowed, dtype=np.int64), self.tombstones)
        if keep.size == 0:
            return self._merge([], qa.shape[0], k)
        return self._merge([filtered_search(p, qa, k, keep) for p in self.parts if len(p)], qa.shape[0], k)

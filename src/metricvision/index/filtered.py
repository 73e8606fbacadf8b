"""Filtered search: keep only allowed ids.

An index with ``search_allowed(q, k, allowed_ids)`` filters inside its own search (FaissIndex:
a faiss ID selector; FlatIndex: scores only the allowed rows); any other Index, and any
predicate filter, is searched with over-fetching and filtering.

A filter is either a collection of allowed ids or a predicate mapping an (n,) int64 id
array to an (n,) bool mask; ``column_filter`` builds a predicate over a metadata column.
Results keep the Index shape: (Q, k), padded with -1 ids and -inf scores.
"""
from __future__ import annotations

from typing import Any, Callable, Collection, Tuple, Union

import numpy as np
import torch

from metricvision.index.base import ArrayLike, Index, as_float32

IdPredicate = Callable[[np.ndarray], np.ndarray]
IdFilter = Union[IdPredicate, ArrayLike, Collection[int]]
SearchFn = Callable[[np.ndarray, int], Tuple[np.ndarray, np.ndarray]]


def as_predicate(allowed: IdFilter) -> IdPredicate:
    """A predicate (n,) int64 ids -> (n,) bool from allowed ids or a predicate."""
    if callable(allowed):
        return allowed
    if isinstance(allowed, torch.Tensor):
        allowed = allowed.detach().cpu().numpy()
    allowed_ids = np.unique(np.fromiter(allowed, dtype=np.int64) if isinstance(allowed, (set, frozenset)) else np.asarray(allowed, dtype=np.int64))
    return lambda ids: np.isin(ids, allowed_ids)


def column_filter(ids: ArrayLike, values: ArrayLike | list[Any], condition: Any) -> IdPredicate:
    """Predicate over a metadata column given as aligned (N,) ids and (N,) values.

    Args:
        ids: (N,) item ids.
        values: (N,) column values, one per id.
        condition: a callable over the values array returning a bool mask, a set/list/tuple
            of accepted values, or a single accepted value.

    Returns:
        A predicate accepting ids whose value passes ``condition``; unknown ids are rejected.
    """
    ids_np = np.asarray(ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64)
    vals = np.asarray(values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values)
    if ids_np.shape[0] != vals.shape[0]:
        raise ValueError(f"ids and values must have the same length, got {ids_np.shape[0]} and {vals.shape[0]}")
    if callable(condition):
        mask = np.asarray(condition(vals), dtype=bool)
    elif isinstance(condition, (set, frozenset, list, tuple)):
        mask = np.isin(vals, list(condition))
    else:
        mask = vals == condition
    return as_predicate(ids_np[mask])


def overfetch_search(search: SearchFn, q: np.ndarray, k: int, keep: IdPredicate, total: int, overfetch: int = 4) -> Tuple[np.ndarray, np.ndarray]:
    """Top-k among kept ids: search k * overfetch, filter, double the fetch for short rows.

    Args:
        search: unfiltered search (q (Q, D), k) -> (scores (Q, k), ids (Q, k)).
        q: (Q, D) float32 queries.
        k: results per query.
        keep: id predicate.
        total: number of stored vectors (the largest useful fetch).
        overfetch: initial fetch factor.

    Returns:
        (scores (Q, k) float32, ids (Q, k) int64), -inf / -1 padded.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if overfetch < 1:
        raise ValueError(f"overfetch must be >= 1, got {overfetch}")
    nq = q.shape[0]
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    ids = np.full((nq, k), -1, dtype=np.int64)
    todo = np.arange(nq)
    fetch = min(max(k * overfetch, k), max(total, 1))
    while todo.size and total > 0:
        s, i = search(q[todo], fetch)
        ok = (i >= 0) & keep(i.reshape(-1)).reshape(i.shape)
        # a row is final when it has k kept hits, or the index returned fewer than asked (nothing more to get)
        done = (ok.sum(1) >= k) | (i[:, -1] < 0) | (fetch >= total)
        for row in np.flatnonzero(done):
            hit = np.flatnonzero(ok[row])[:k]
            scores[todo[row], : hit.size] = s[row, hit]
            ids[todo[row], : hit.size] = i[row, hit]
        todo = todo[~done]
        fetch = min(fetch * 2, total)
    return scores, ids


def filtered_search(index: Index, q: ArrayLike, k: int, allowed: IdFilter, overfetch: int = 4) -> Tuple[np.ndarray, np.ndarray]:
    """Top-k of (Q, D) queries restricted to allowed ids, for any Index.

    Args:
        index: any Index.
        q: (Q, D) queries.
        k: results per query.
        allowed: allowed ids (collection / array) or a predicate over ids.
        overfetch: initial fetch factor (k * overfetch results per query, doubled as needed).

    Returns:
        (scores (Q, k) float32, ids (Q, k) int64), -inf / -1 padded.
    """
    if overfetch < 1:  # checked here too: indexes with search_allowed never over-fetch
        raise ValueError(f"overfetch must be >= 1, got {overfetch}")
    qa = as_float32(q, index.dim, "queries")
    if hasattr(index, "search_allowed") and not callable(allowed):
        return index.search_allowed(qa, k, np.unique(np.asarray(list(allowed) if isinstance(allowed, (set, frozenset)) else allowed, dtype=np.int64)))
    return overfetch_search(index.search, qa, k, as_predicate(allowed), len(index), overfetch)

"""Streaming evaluation of category retrieval, with k = max(max(ks), largest R).

Queries against separate references go through an index in chunks, holding one (chunk, k)
neighbour list at a time; leave-one-out with k <= SELF_KNN_MAX_K runs ``self_knn``, which yields
finished row blocks and holds about k + 128 candidates per row (larger k, as in category-level sets
of a few thousand images a class, goes through the index too). Metrics are running sums, never
N x N: 1M x 128 embeddings evaluate in a few GB.
"""
from __future__ import annotations

from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from metricvision.index.base import Index, check_finite
from metricvision.index.faiss_index import FaissIndex
from metricvision.index.flat import FlatIndex
from metricvision.metrics.clustering import cluster_scores
from metricvision.metrics.retrieval import ap_at_r_per_query, hits_from_labels, r_precision_per_query

ArrayLike = np.ndarray | torch.Tensor
# Leave-one-out k above this goes through the chunked exact index instead of ``self_knn``: self_knn
# holds (N, >= k + 128) candidate lists, and above block / 16 = 4096 / 16 neighbours its diagonal
# blocks give no first bound of the k-th best, so the lists widen towards N x N (Fashion-MNIST's
# 35,000 test images, R = 6,999: 13 GB); the index holds (query_chunk, k) at a time.
SELF_KNN_MAX_K = 256


def evaluate_retrieval(
    embeddings: ArrayLike,
    labels: ArrayLike,
    ks: Sequence[int] = (1, 2, 4, 8),
    clustering: bool = True,
    index: Optional[Index] = None,
    query_chunk: int = 2048,
    seed: int = 0,
) -> Dict[str, float]:
    """Leave-one-out retrieval on one set: each item queries all others (never itself).

    Args:
        embeddings: (N, D) embeddings, L2-normalized for cosine scoring.
        labels: (N,) int labels.
        ks: Recall@K cut-offs; "precision@1" equals "recall@1".
        clustering: also compute NMI / AMI (k-means; costly for large N).
        index: an empty index to fill; default exact_index().

    Returns:
        recall@k for each k, precision@1, r_precision, map@r, and nmi / ami. Queries
        without any relevant reference are left out, as in pytorch-metric-learning.
    """
    from tqdm import tqdm

    x, y = _as_numpy(embeddings, np.float32), _as_numpy(labels, np.int64)
    # two silent stages of up to a minute on 2 cores for a few thousand items: say which one runs
    with tqdm(total=1 + clustering, desc="evaluating: leave-one-out k-NN", unit="stage", leave=False) as stages:
        out = retrieval_scores(x, y, ks=ks, index=index, query_chunk=query_chunk)
        stages.update()
        if clustering:
            stages.set_description("evaluating: k-means for NMI / AMI")
            out.update(cluster_scores(x, y, seed))
            stages.update()
    return out


def retrieval_scores(
    queries: ArrayLike,
    query_labels: ArrayLike,
    references: Optional[ArrayLike] = None,
    reference_labels: Optional[ArrayLike] = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    index: Optional[Index] = None,
    query_chunk: int = 2048,
) -> Dict[str, float]:
    """Recall@K, P@1, R-Precision and MAP@R, streamed over query chunks.

    Args:
        queries: (Q, D) query embeddings.
        query_labels: (Q,) int labels.
        references: (R, D) reference embeddings; None for leave-one-out on the queries.
        reference_labels: (R,) int labels (with ``references``).
        ks: Recall@K cut-offs.
        index: an empty index to fill with the references; default exact_index().
        query_chunk: queries searched at once.

    Returns:
        recall@k for each k, precision@1, r_precision, map@r, num_queries (those with R > 0).
    """
    q, qy = _as_numpy(queries, np.float32), _as_numpy(query_labels, np.int64)
    loo = references is None
    r = q if loo else _as_numpy(references, np.float32)
    ry = qy if loo else _as_numpy(reference_labels, np.int64)
    if q.shape[0] != qy.shape[0] or r.shape[0] != ry.shape[0]:
        raise ValueError(f"embeddings and labels differ in length: {q.shape[0]} vs {qy.shape[0]}, {r.shape[0]} vs {ry.shape[0]}")
    check_finite(q, "queries")
    if not loo:
        check_finite(r, "references")
    classes, ref_counts = np.unique(ry, return_counts=True)
    pos = np.searchsorted(classes, qy).clip(max=max(len(classes) - 1, 0))
    num_relevant = np.where((len(classes) > 0) & (classes[pos] == qy), ref_counts[pos], 0) - int(loo)
    num_relevant = num_relevant.clip(min=0)
    k = int(min(len(r) - int(loo), max(max(ks), num_relevant.max(initial=0))))
    sums = {f"recall@{kk}": 0.0 for kk in ks} | {"precision@1": 0.0, "r_precision": 0.0, "map@r": 0.0}
    count = 0
    for rows, ids in _ranked(q, qy, r, loo, k, index, query_chunk):
        hits = hits_from_labels(np.where(ids >= 0, ry[ids], -1), qy[rows])
        nr = num_relevant[rows]
        valid = nr > 0
        hits, nr = hits[valid], nr[valid]
        count += len(nr)
        for kk in ks:
            sums[f"recall@{kk}"] += float(hits[:, :kk].any(1).sum())
        sums["precision@1"] += float(hits[:, 0].sum()) if hits.shape[1] else 0.0
        sums["r_precision"] += float(r_precision_per_query(hits, nr).sum())
        sums["map@r"] += float(ap_at_r_per_query(hits, nr).sum())
    out = {name: v / count if count else 0.0 for name, v in sums.items()}
    out["num_queries"] = float(count)
    return out


def _ranked(q: np.ndarray, qy: np.ndarray, r: np.ndarray, loo: bool, k: int, index: Optional[Index], query_chunk: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """(query rows (b,), (b, k) ranked reference ids) for chunks covering every query once.

    Equal scores rank the smaller reference index first. Leave-one-out with no index given and
    k <= SELF_KNN_MAX_K runs the symmetric ``self_knn`` (each pair of blocks scored once) on the queries ordered
    by label: a row's first block then holds its class mates, so its threshold starts near its
    final value and fewer candidates are kept. The order changes the speed only: ties are
    broken by the original index, so the neighbours, and the metrics, do not depend on it.
    """
    if loo and index is None and 1 <= k <= SELF_KNN_MAX_K:
        from metricvision.index.self_knn import self_knn  # numba loads here, not at import

        order = np.argsort(qy, kind="stable")
        for s, _, ids in self_knn(q[order], k, ids=order):
            yield order[s : s + len(ids)], ids
        return
    want = k + int(loo)
    # an exact search looks one further: a tie across the last place is settled by index
    extra = int(index is None and want < len(r))
    if index is None:
        index = exact_index(r.shape[1])
    index.add(r, np.arange(len(r)))
    for s in range(0, len(q), query_chunk):
        scores, ids = index.search(q[s : s + query_chunk], want + extra)
        order = np.lexsort((ids, -scores))  # an index may return equal scores in any order
        scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        if extra:
            ids = _settle_last_place(q[s : s + query_chunk], r, scores, ids, want)
        rows = np.arange(s, s + len(ids))
        yield rows, _drop_self(ids, rows[:, None]) if loo else ids


def _settle_last_place(q: np.ndarray, r: np.ndarray, scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """(b, k) of the (b, k + 1) ranked ``ids``; a row whose (k+1)-th score ties its k-th is
    ranked again over all of ``r`` (one (R,) score row at a time) by a stable sort, since an
    index chooses among tied references in its own order, not by index."""
    out = ids[:, :k].copy()
    for i in np.flatnonzero(scores[:, k - 1] == scores[:, k]):
        out[i] = np.argsort(-(r @ q[i]), kind="stable")[:k]
    return out


def exact_index(dim: int) -> Index:
    """Exact inner-product index for queries against separate references: faiss's flat index
    when faiss is installed (BLAS matmul + fused heap top-k), else the torch FlatIndex.
    (Leave-one-out, one set against itself, goes through the faster ``self_knn`` while k is small.)"""
    try:
        return FaissIndex(dim, "Flat", "ip")
    except ImportError:
        return FlatIndex(dim, "ip")


def _as_numpy(x: ArrayLike, dtype: type) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


def _drop_self(ids: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Remove each query's own id from its (Q, k) ranked ids -> (Q, k - 1)."""
    is_self = ids == own
    # rows where self was not retrieved drop their last entry instead
    is_self[~is_self.any(1), -1] = True
    return ids[~is_self].reshape(ids.shape[0], ids.shape[1] - 1)

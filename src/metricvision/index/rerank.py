"""Re-ranking that maps ranked lists to ranked lists: alpha query expansion and diffusion.

Positions: these functions rank the rows of a ``database`` (N, D) array; ids are row
positions in it. k-reciprocal re-ranking lives in ``kreciprocal.py``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from scipy import sparse
import torch

from metricvision.index.base import ArrayLike, Index, as_float32
from metricvision.index.flat import FlatIndex
from metricvision.index.diffusion import diffuse


def _exact(database: np.ndarray) -> FlatIndex:
    index = FlatIndex(database.shape[1], "ip")
    index.add(database)
    return index


def top_k(scores: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Best-first top-k of a (Q, N) score matrix -> (scores (Q, k) float32, positions (Q, k)), -inf / -1 padded."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    kk = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
    out_scores = np.full((scores.shape[0], k), -np.inf, dtype=np.float32)
    out_ids = np.full((scores.shape[0], k), -1, dtype=np.int64)
    out_scores[:, :kk], out_ids[:, :kk] = np.take_along_axis(scores, top, 1), top
    return out_scores, out_ids


def alpha_query_expansion(queries: ArrayLike, database: ArrayLike, ranks: ArrayLike, n: int = 10, alpha: float = 3.0) -> np.ndarray:
    """Alpha-weighted query expansion (alpha-QE, Radenovic et al., TPAMI 2018).

    The new query is the query plus its top-``n`` neighbours weighted by
    ``max(sim, 0) ** alpha``, L2-normalized (the query itself has weight 1).

    Args:
        queries: (Q, D) L2-normalized queries.
        database: (N, D) L2-normalized database vectors.
        ranks: (Q, >=n) database positions ranked best first; -1 entries are skipped.
        n: neighbours used per query.
        alpha: weight exponent; 0 gives plain average query expansion.

    Returns:
        (Q, D) expanded, L2-normalized queries.
    """
    q = as_float32(queries, name="queries")
    x = as_float32(database, q.shape[1], "database")
    r = np.asarray(ranks, dtype=np.int64)
    if n < 0 or alpha < 0:
        raise ValueError(f"n and alpha must be >= 0, got n={n}, alpha={alpha}")
    if r.ndim != 2 or r.shape[0] != q.shape[0] or r.shape[1] < n:
        raise ValueError(f"ranks must be (Q={q.shape[0]}, >= n={n}), got shape {r.shape}")
    top = r[:, :n]
    valid = top >= 0
    neighbours = x[np.where(valid, top, 0)]  # (Q, n, D)
    weights = np.clip(np.einsum("qd,qnd->qn", q, neighbours), 0, None) ** alpha * valid
    out = q + np.einsum("qn,qnd->qd", weights, neighbours)
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def alpha_qe_search(
    queries: ArrayLike, database: ArrayLike, k: int, n: int = 10, alpha: float = 3.0, index: Optional[Index] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Search, expand each query with alpha-QE, search again.

    Args:
        queries: (Q, D) L2-normalized queries.
        database: (N, D) L2-normalized database vectors.
        k: results per query.
        n: neighbours used for the expansion.
        alpha: weight exponent.
        index: an index over ``database`` whose ids are row positions (default: exact search).

    Returns:
        (scores (Q, k), positions (Q, k)), -1 padded.
    """
    x = as_float32(database, name="database")
    index = _exact(x) if index is None else index
    return index.search(expanded_queries(queries, x, n, alpha, index), k)


def expanded_queries(queries: ArrayLike, database: ArrayLike, n: int = 10, alpha: float = 3.0,
                     index: Optional[Index] = None) -> np.ndarray:
    """(Q, D) alpha-QE queries: search ``database`` (N, D) for each query's top-``n``, then expand with them."""
    x = as_float32(database, name="database")
    index = _exact(x) if index is None else index
    _, ranks = index.search(queries, max(n, 1))
    return alpha_query_expansion(queries, x, ranks, n, alpha)


class Diffusion:
    """Diffusion on a mutual kNN graph of the database (Iscen et al., CVPR 2017).

    The affinity is ``max(sim, 0) ** gamma`` between mutual k-nearest neighbours,
    symmetrically normalized to W; a query's ranking solves ``(I - alpha W) f = y`` by
    conjugate gradient, where y holds the query's ``query_k`` top affinities.

    Args:
        k: neighbours per database item in the graph.
        alpha: diffusion weight in (0, 1).
        gamma: affinity exponent.
        query_k: database neighbours that seed each query.
        maxiter: conjugate-gradient iterations.
        tol: conjugate-gradient relative tolerance.
    """

    def __init__(self, k: int = 50, alpha: float = 0.99, gamma: float = 3.0, query_k: int = 10, maxiter: int = 20, tol: float = 1e-6) -> None:
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if k < 1 or query_k < 1 or maxiter < 1:
            raise ValueError(f"k, query_k and maxiter must be >= 1, got {k}, {query_k}, {maxiter}")
        self.k, self.alpha, self.gamma, self.query_k = k, alpha, gamma, query_k
        self.maxiter, self.tol = maxiter, tol

    def _affinity(self, scores: np.ndarray) -> np.ndarray:
        return np.clip(scores, 0, None).astype(np.float64) ** self.gamma

    def fit(self, database: ArrayLike) -> "Diffusion":
        """Build the graph over (N, D) L2-normalized database vectors."""
        x = as_float32(database, name="database")
        n = x.shape[0]
        self.index_ = _exact(x)
        scores, nbrs = self.index_.search(x, min(self.k + 1, n))
        rows = np.repeat(np.arange(n), nbrs.shape[1])
        keep = (nbrs.reshape(-1) >= 0) & (nbrs.reshape(-1) != rows)
        a = sparse.csr_matrix((self._affinity(scores).reshape(-1)[keep], (rows[keep], nbrs.reshape(-1)[keep])), shape=(n, n))
        a = a.minimum(a.T)  # mutual neighbours only
        degree = np.asarray(a.sum(1)).reshape(-1)
        inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-300)), 0.0)
        d = sparse.diags(inv_sqrt)
        g = (d @ a @ d).tocsr()
        self.graph_ = torch.sparse_csr_tensor(torch.from_numpy(g.indptr.astype(np.int64)),
                                              torch.from_numpy(g.indices.astype(np.int64)), torch.from_numpy(g.data), (n, n))
        return self

    def scores(self, queries: ArrayLike) -> np.ndarray:
        """(Q, N) diffusion scores f of (Q, D) L2-normalized queries."""
        if not hasattr(self, "graph_"):
            raise RuntimeError("Diffusion.fit(database) must be called before scores/search")
        q = as_float32(queries, self.index_.dim, "queries")
        seed_scores, seeds = self.index_.search(q, min(self.query_k, len(self.index_)))
        y = torch.zeros(len(self.index_), q.shape[0], dtype=torch.float64)
        valid = seeds >= 0
        cols = np.broadcast_to(np.arange(q.shape[0])[:, None], seeds.shape)
        y[torch.from_numpy(seeds[valid]), torch.from_numpy(cols[valid])] = torch.from_numpy(self._affinity(seed_scores[valid]))
        return diffuse(self.graph_, y, self.alpha, self.tol, self.maxiter).T.float().numpy()

    def search(self, queries: ArrayLike, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k database positions by diffusion score -> (scores (Q, k), positions (Q, k))."""
        return top_k(self.scores(queries), k)

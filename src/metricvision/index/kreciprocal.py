"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), vectorized.

Follows the authors' ``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)``
step by step, with the per-item loops replaced by boolean matrix products. Memory is a
few (Q+G, Q+G) float32 matrices, as in the reference.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from metricvision.index.base import ArrayLike, as_float32
from metricvision.index.rerank import top_k
from metricvision.similarity import squared_distances


def _reciprocal(rank: np.ndarray, k: int) -> np.ndarray:
    """(N, N) bool: j is among i's first k and i among j's first k (self included)."""
    near = np.zeros(rank.shape, dtype=bool)
    np.put_along_axis(near, rank[:, :k], True, axis=1)
    return near & near.T


def k_reciprocal_distances(
    q_g_dist: ArrayLike, q_q_dist: ArrayLike, g_g_dist: ArrayLike, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> np.ndarray:
    """Re-ranked query-gallery distances.

    Args:
        q_g_dist: (Q, G) Euclidean distances query-gallery.
        q_q_dist: (Q, Q) query-query distances.
        g_g_dist: (G, G) gallery-gallery distances.
        k1: k of the k-reciprocal sets.
        k2: neighbours averaged in the local query expansion (1 disables it).
        lambda_value: weight of the original distance against the Jaccard distance.

    Returns:
        (Q, G) float32 final distances (smaller is better).
    """
    qg, qq, gg = (np.asarray(d.cpu().numpy() if isinstance(d, torch.Tensor) else d) for d in (q_g_dist, q_q_dist, g_g_dist))
    nq, ng = qg.shape
    if qq.shape != (nq, nq) or gg.shape != (ng, ng):
        raise ValueError(f"expected q_q_dist ({nq}, {nq}) and g_g_dist ({ng}, {ng}), got {qq.shape} and {gg.shape}")
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0 <= lambda_value <= 1:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    dist = np.power(np.block([[qq, qg], [qg.T, gg]]), 2).astype(np.float32)
    dist = np.transpose(1.0 * dist / np.max(dist, axis=0))
    rank = np.argsort(dist).astype(np.int32)

    recip = _reciprocal(rank, k1 + 1)
    half = _reciprocal(rank, int(np.around(k1 / 2.0)) + 1)
    # candidate c of i's set brings its half-size set when that overlaps i's set by more than 2/3
    overlap = recip.astype(np.float32) @ half.T.astype(np.float32)
    grow = recip & (overlap > 2.0 / 3 * half.sum(1)[None, :])
    expanded = recip | (grow.astype(np.float32) @ half.astype(np.float32) > 0)
    weight = np.where(expanded, np.exp(-dist), np.float32(0)).astype(np.float32)
    v = weight / weight.sum(1, keepdims=True)
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(v.shape[0])])

    jaccard = np.zeros((nq, v.shape[0]), dtype=np.float32)
    for i in range(nq):
        cols = np.flatnonzero(v[i])
        shared = np.minimum(v[:, cols], v[i, cols][None]).sum(1)
        jaccard[i] = 1 - shared / (2.0 - shared)
    final = jaccard * (1 - lambda_value) + dist[:nq] * lambda_value
    return final[:, nq:].astype(np.float32)


def k_reciprocal_search(
    queries: ArrayLike, gallery: ArrayLike, k: int, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> Tuple[np.ndarray, np.ndarray]:
    """Rank the gallery for each query by k-reciprocal distance (Euclidean base distances).

    Args:
        queries: (Q, D) query embeddings.
        gallery: (G, D) gallery embeddings.
        k: results per query.

    Returns:
        (scores (Q, k) = minus final distances, positions (Q, k) into gallery), -1 padded.
    """
    q = torch.from_numpy(as_float32(queries, name="queries"))
    g = torch.from_numpy(as_float32(gallery, q.shape[1], "gallery"))
    qg, qq, gg = (squared_distances(a, b).sqrt().numpy() for a, b in ((q, g), (q, q), (g, g)))
    return top_k(-k_reciprocal_distances(qg, qq, gg, k1, k2, lambda_value), k)

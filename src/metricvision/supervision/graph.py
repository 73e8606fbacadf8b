"""k-NN graphs on embeddings (diffusion on them: ``index.diffusion``) and the random walk's stationary distribution.

Shared by label propagation (Iscen et al., CVPR 2019) and mining on manifolds
(Iscen et al., CVPR 2018).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


GRAPH_KINDS = ("symmetric", "directed", "mutual")


def knn_graph(embeddings: torch.Tensor, k: int = 50, gamma: float = 3.0, kind: str = "symmetric") -> torch.Tensor:
    """k-NN affinity with similarities raised to ``gamma``.

    Args:
        embeddings: (N, D) embeddings (L2-normalized here; cosine similarity).
        k: neighbours per node (self excluded); clipped to N - 1.
        gamma: power applied to the (non-negative) similarities.
        kind: "symmetric" W + W^T, "directed" W itself (row i holds i's k neighbours), or "mutual":
            an edge only between mutual k-NN (i among j's k neighbours and j among i's), weight s_ij^gamma.

    Returns:
        (N, N) sparse COO affinity, zero diagonal.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if kind not in GRAPH_KINDS:
        raise ValueError(f"kind must be one of {GRAPH_KINDS}, got '{kind}'")
    x = F.normalize(embeddings.detach().float().cpu(), dim=1)
    n = x.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return torch.sparse_coo_tensor(torch.empty(2, 0, dtype=torch.int64), torch.empty(0), (n, n), check_invariants=False).coalesce()
    from metricvision.index.self_knn import self_knn  # numba loads here, not at import

    # exact leave-one-out k-NN: each pair of blocks scored once (half the matmuls of a search), bf16 where it pays
    found = list(self_knn(x, k, progress=False))
    scores = torch.from_numpy(np.concatenate([f[1] for f in found]))
    ids = torch.from_numpy(np.concatenate([f[2] for f in found]))
    rows = torch.arange(n).unsqueeze(1).expand_as(ids)
    keep = ids >= 0
    r, c, s = rows[keep], ids[keep], scores[keep].clamp_min(0.0) ** gamma
    if kind == "mutual":
        both = torch.isin(c * n + r, r * n + c)
        r, c, s = r[both], c[both], s[both] / 2  # (W + W^T) / 2 on mutual pairs: exactly symmetric
    W = torch.sparse_coo_tensor(torch.stack([r, c]), s, (n, n), check_invariants=False)
    return W.coalesce() if kind == "directed" else (W + W.t()).coalesce()


def stationary_distribution(A: torch.Tensor, damping: float = 0.99, tol: float = 1e-10, max_iter: int = 1000) -> torch.Tensor:
    """Stationary distribution of the random walk on a sparse (N, N) affinity, by power iteration.

    The walker follows P = D^-1 A (row-normalized; a node without edges jumps uniformly) with
    probability ``damping`` and jumps to a uniformly random node otherwise, which makes the
    distribution unique when the k-NN graph has several components: pi = damping P^T pi + (1 - damping) / N.

    Returns:
        (N,) float64 probabilities (summing to 1).
    """
    if not 0 < damping <= 1:
        raise ValueError(f"damping must be in (0, 1], got {damping}")
    A = A.coalesce().double()
    n = A.shape[0]
    r, c = A.indices()
    deg = torch.zeros(n, dtype=torch.float64).index_add_(0, r, A.values())
    Pt = torch.sparse_coo_tensor(torch.stack([c, r]), A.values() / deg[r], (n, n), check_invariants=False).coalesce()
    dangling = deg <= 0
    pi = torch.full((n,), 1.0 / n, dtype=torch.float64)
    for _ in range(max_iter):
        walk = torch.sparse.mm(Pt, pi[:, None]).squeeze(1) + pi[dangling].sum() / n
        new = damping * walk + (1 - damping) / n
        done = float((new - pi).abs().sum()) < tol
        pi = new
        if done:
            break
    return pi / pi.sum()


def normalize_affinity(W: torch.Tensor) -> torch.Tensor:
    """Symmetric normalization D^-1/2 W D^-1/2 of a sparse (N, N) affinity (isolated nodes stay 0)."""
    W = W.coalesce()
    deg = torch.sparse.sum(W, dim=1).to_dense()
    inv = torch.where(deg > 0, deg.clamp_min(1e-12).rsqrt(), torch.zeros_like(deg))
    r, c = W.indices()
    return torch.sparse_coo_tensor(W.indices(), W.values() * inv[r] * inv[c], W.shape, check_invariants=False).coalesce()



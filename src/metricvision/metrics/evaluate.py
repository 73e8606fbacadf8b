"""Streaming evaluation of category retrieval: queries go through an index in chunks."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch

from metricvision.index.base import Index
from metricvision.index.flat import FlatIndex
from metricvision.metrics.clustering import cluster_scores
from metricvision.metrics.retrieval import hits_from_labels, map_at_r, r_precision, recall_at_k


def evaluate_retrieval(
    embeddings: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
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
        index: an empty index to fill; default FlatIndex(ip).

    Returns:
        recall@k for each k, precision@1, r_precision, map@r, and nmi / ami.
    """
    x = embeddings.detach().cpu().float().numpy() if isinstance(embeddings, torch.Tensor) else np.asarray(embeddings, np.float32)
    y = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"embeddings ({x.shape[0]}) and labels ({y.shape[0]}) differ in length")
    n = x.shape[0]
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    num_relevant = counts[inverse] - 1
    k = int(min(n - 1, max(max(ks), num_relevant.max(initial=0)))) + 1
    if index is None:
        index = FlatIndex(x.shape[1], "ip")
    index.add(x, np.arange(n))
    hits = np.zeros((n, k - 1), dtype=bool)
    for s in range(0, n, query_chunk):
        _, ids = index.search(x[s : s + query_chunk], k)
        own = np.arange(s, min(s + query_chunk, n))[:, None]
        ids = _drop_self(ids, own)
        hits[s : s + len(ids)] = hits_from_labels(np.where(ids >= 0, y[ids], -1), y[s : s + len(ids)])
    out = recall_at_k(hits, ks)
    out["precision@1"] = out.get("recall@1", float(hits[:, 0].mean()))
    out["r_precision"] = r_precision(hits, num_relevant)
    out["map@r"] = map_at_r(hits, num_relevant)
    if clustering:
        out.update(cluster_scores(x, y, seed))
    return out


def _drop_self(ids: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Remove each query's own id from its (Q, k) ranked ids -> (Q, k - 1)."""
    is_self = ids == own
    # rows where self was not retrieved drop their last entry instead
    is_self[~is_self.any(1), -1] = True
    return ids[~is_self].reshape(ids.shape[0], ids.shape[1] - 1)

"""Clustering quality of embeddings: NMI and AMI of k-means clusters against labels."""
from __future__ import annotations

from typing import Dict

import numpy as np
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

BACKENDS = ("auto", "faiss", "sklearn")
# above this many (point, centroid) pairs "auto" leaves scikit-learn's converged k-means++
# (minutes at 100k points x 1000 classes) for faiss's 20 iterations
AUTO_FAISS_ABOVE = 10**7


def cluster_scores(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0, backend: str = "auto") -> Dict[str, float]:
    """NMI and AMI of k-means (k = number of classes) on (N, D) embeddings vs (N,) labels.

    backend "faiss" runs faiss.Kmeans(niter=20, seed=1234 + seed), the k-means of
    pytorch-metric-learning's AccuracyCalculator, so seed 0 gives its NMI / AMI; it scales to
    large N (20 iterations, at most 256 sampled points per centroid; random initial centroids,
    so on small sets it may merge clusters). "sklearn" runs scikit-learn's KMeans(n_init=1,
    k-means++) to convergence. "auto": sklearn up to N x classes = AUTO_FAISS_ABOVE, faiss
    beyond when installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got '{backend}'")
    labels = np.asarray(labels)
    n_classes = len(np.unique(labels))
    if n_classes == 0:
        raise ValueError("cluster_scores needs at least one sample, got 0")
    if n_classes in (1, len(labels)):
        # k = 1 puts every point in one cluster, k = N each (distinct) point in its own: the
        # clustering equals the labelling, NMI = AMI = 1 as scikit-learn and PML report
        pred = np.zeros(len(labels), np.int64) if n_classes == 1 else np.arange(len(labels))
    else:
        pred = _kmeans(np.ascontiguousarray(embeddings, np.float32), n_classes, seed, backend)
    return {
        "nmi": float(normalized_mutual_info_score(labels, pred)),
        "ami": float(adjusted_mutual_info_score(labels, pred)),
    }


def _kmeans(x: np.ndarray, k: int, seed: int, backend: str) -> np.ndarray:
    """(N,) cluster of each row of (N, D) ``x`` by k-means with ``k`` clusters."""
    if backend == "auto" and len(x) * k <= AUTO_FAISS_ABOVE:
        backend = "sklearn"
    if backend == "auto":
        try:
            import faiss  # noqa: F401
            backend = "faiss"
        except ImportError:
            backend = "sklearn"
    if backend == "faiss":
        import faiss

        kmeans = faiss.Kmeans(x.shape[1], k, niter=20, seed=1234 + seed, verbose=False)
        kmeans.train(x)
        return kmeans.index.search(x, 1)[1][:, 0]
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(x)

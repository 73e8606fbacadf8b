"""Clustering quality of embeddings: NMI and AMI of k-means clusters against labels."""
from __future__ import annotations

from typing import Dict

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score


def cluster_scores(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0) -> Dict[str, float]:
    """NMI and AMI of k-means (k = number of classes) on (N, D) embeddings vs (N,) labels."""
    labels = np.asarray(labels)
    n_classes = len(np.unique(labels))
    if n_classes < 2 or len(labels) <= n_classes:
        return {"nmi": 0.0, "ami": 0.0}
    pred = KMeans(n_clusters=n_classes, n_init=1, random_state=seed).fit_predict(np.asarray(embeddings, np.float32))
    return {
        "nmi": float(normalized_mutual_info_score(labels, pred)),
        "ami": float(adjusted_mutual_info_score(labels, pred)),
    }

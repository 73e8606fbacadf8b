"""Category-level retrieval metrics over ranked lists: Recall@K / P@1, R-Precision, MAP@R.

Definitions follow Musgrave et al., "A Metric Learning Reality Check" (ECCV 2020) and
pytorch-metric-learning's AccuracyCalculator: R is the number of references relevant to a
query (the query itself excluded); queries with R = 0 are left out of the averages.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np


def hits_from_labels(neighbor_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """(Q, K) bool: is the k-th neighbour of each query relevant (same label)?

    Args:
        neighbor_labels: (Q, K) labels of the ranked neighbours (-1 for padding never matches
            a query label >= 0).
        query_labels: (Q,) labels.
    """
    return neighbor_labels == np.asarray(query_labels).reshape(-1, 1)


def recall_at_k(hits: np.ndarray, ks: Sequence[int]) -> Dict[str, float]:
    """Fraction of queries with at least one relevant item in the top k, for each k.

    Args:
        hits: (Q, K) bool ranked relevance, K >= max(ks).
    """
    out = {}
    for k in ks:
        if k < 1 or k > hits.shape[1]:
            raise ValueError(f"k must be in [1, {hits.shape[1]}], got {k}")
        out[f"recall@{k}"] = float(hits[:, :k].any(axis=1).mean()) if len(hits) else 0.0
    return out


def r_precision_per_query(hits: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
    """(Q,) (relevant items in the top R) / R; NaN where R = 0.

    Args:
        hits: (Q, K) bool with K >= max(num_relevant).
        num_relevant: (Q,) R per query.
    """
    r = np.asarray(num_relevant)
    within = np.arange(hits.shape[1])[None, :] < r[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(r > 0, (hits & within).sum(1) / r, np.nan)


def ap_at_r_per_query(hits: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
    """(Q,) AP@R = (1/R) sum_{i<=R} P(i) rel(i); NaN where R = 0.

    Args:
        hits: (Q, K) bool with K >= max(num_relevant).
        num_relevant: (Q,) R per query.
    """
    r = np.asarray(num_relevant)
    within = np.arange(hits.shape[1])[None, :] < r[:, None]
    h = hits & within
    precision_at_i = np.cumsum(h, axis=1, dtype=np.float64) / np.arange(1, hits.shape[1] + 1)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(r > 0, (precision_at_i * h).sum(1) / r, np.nan)


def r_precision(hits: np.ndarray, num_relevant: np.ndarray) -> float:
    """Mean over queries of (relevant items in the top R) / R; queries with R = 0 are skipped.

    Args:
        hits: (Q, K) bool with K >= max(num_relevant).
        num_relevant: (Q,) R per query.
    """
    return _nanmean(r_precision_per_query(hits, num_relevant))


def map_at_r(hits: np.ndarray, num_relevant: np.ndarray) -> float:
    """MAP@R: mean over queries of (1/R) sum_{i<=R} P(i) * rel(i); R = 0 queries are skipped.

    Args:
        hits: (Q, K) bool with K >= max(num_relevant).
        num_relevant: (Q,) R per query.
    """
    return _nanmean(ap_at_r_per_query(hits, num_relevant))


def _nanmean(values: np.ndarray) -> float:
    valid = ~np.isnan(values)
    return float(values[valid].mean()) if valid.any() else 0.0

"""What the report shows beyond the headline metrics: leave-one-out neighbours, the classes
that fail most and whom they are confused with, and the precision-recall curve."""
from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from metricvision.index import FlatIndex
from metricvision.metrics.retrieval import hits_from_labels


def neighbours(embeddings: torch.Tensor | np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Leave-one-out nearest neighbours: (N, k) scores and ids (-1 padded), a point never its own neighbour."""
    x = torch.as_tensor(embeddings, dtype=torch.float32)
    index = FlatIndex(x.shape[1])
    index.add(x)
    scores, ids = index.search(x, k + 1)
    scores, ids = np.asarray(scores), np.asarray(ids)
    keep = ids != np.arange(len(ids))[:, None]
    # drop each row's own id (or, if it is absent among exact ties, the last column)
    keep[keep.all(axis=1), -1] = False
    return scores[keep].reshape(len(ids), k), ids[keep].reshape(len(ids), k)


def precision_recall(ids: np.ndarray, labels: np.ndarray, levels: int = 21) -> Tuple[np.ndarray, np.ndarray]:
    """Mean interpolated precision at evenly spaced recall levels over each query's ranked list.

    Interpolated precision at recall R is the best precision at any rank whose recall is >= R
    (0 when the list never reaches R). Queries without any other item of their class are skipped.

    Args:
        ids: (Q, K) ranked neighbour ids of each point (-1 padded), leave-one-out.
        labels: (Q,) class of each point.
        levels: number of recall levels in [0, 1].

    Returns:
        (levels,) recall levels and (levels,) mean interpolated precision.
    """
    labels = np.asarray(labels)
    hits = hits_from_labels(np.where(ids >= 0, labels[ids], -1), labels)
    counts = np.bincount(labels - labels.min())[labels - labels.min()] - 1
    valid = counts > 0
    found = np.cumsum(hits[valid], axis=1)
    precision = found / np.arange(1, hits.shape[1] + 1)
    recall = found / counts[valid, None]
    grid = np.linspace(0, 1, levels)
    if not len(found):
        return grid, np.zeros(levels)
    return grid, np.array([np.where(recall >= level, precision, 0.0).max(axis=1).mean() for level in grid])


def failing_classes(ids: np.ndarray, labels: np.ndarray, names: Sequence[str], top: int = 10,
                    confusions: int = 3) -> List[Dict[str, Any]]:
    """The classes whose queries most often get a wrong nearest neighbour.

    Args:
        ids: (Q, K) leave-one-out neighbour ids (column 0 = the nearest).
        labels: (Q,) class of each point.
        names: (Q,) display name of each point's class.
        top: how many classes to return.
        confusions: how many of the classes they are confused with to name.

    Returns:
        one dict per class, worst first: name, label, queries, errors, precision@1 and
        ``confused_with``: [(class name, how many of its queries' nearest neighbours it holds)].
    """
    labels = np.asarray(labels)
    nearest = ids[:, 0]
    wrong: Dict[int, Counter] = {}
    queries = Counter(labels.tolist())
    for q, n in enumerate(nearest):
        if n >= 0 and labels[n] != labels[q]:
            wrong.setdefault(int(labels[q]), Counter())[int(n)] += 1
    name_of = {int(c): names[i] for i, c in enumerate(labels)}
    rows = []
    for label, counter in wrong.items():
        by_class = Counter()
        for n, count in counter.items():
            by_class[int(labels[n])] += count
        errors = sum(counter.values())
        rows.append({"name": name_of[label], "label": label, "queries": queries[label], "errors": errors,
                     "precision@1": 1 - errors / queries[label],
                     "confused_with": [(name_of[c], k) for c, k in by_class.most_common(confusions)]})
    rows.sort(key=lambda r: (-r["errors"], r["precision@1"], r["label"]))
    return rows[:top]

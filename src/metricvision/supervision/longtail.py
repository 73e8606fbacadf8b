"""Long-tail and open-set protocols: a Pareto long-tailed split, many/medium/few-shot
accuracy, and open-set rejection by a similarity threshold (F-measure, AUROC)."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
from sklearn.metrics import roc_auc_score

from metricvision.supervision.base import SUPERVISIONS, LabelsLike, Supervision


def pareto_counts(num_classes: int, max_count: int, min_count: int = 1, alpha: float = 6.0) -> np.ndarray:
    """Per-class sample counts with a Pareto (Lomax) profile, largest first.

    n_i = max_count * (1 + s r_i) ^ -alpha with r_i = i / (C - 1) and s chosen so that the
    last class gets ``min_count`` (ImageNet-LT draws its counts from a Pareto with alpha = 6).
    """
    if num_classes < 1 or not 1 <= min_count <= max_count:
        raise ValueError(f"need num_classes >= 1 and 1 <= min_count <= max_count, got {num_classes}, {min_count}, {max_count}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    rank = np.arange(num_classes) / max(1, num_classes - 1)
    s = (max_count / min_count) ** (1.0 / alpha) - 1.0
    return np.maximum(min_count, np.round(max_count * (1.0 + s * rank) ** -alpha)).astype(np.int64)


def long_tail_subset(labels: LabelsLike, max_count: int, min_count: int = 1, alpha: float = 6.0, seed: int = 0) -> np.ndarray:
    """Indices of a long-tailed subset: classes in random order get ``pareto_counts`` samples
    (fewer when a class has fewer)."""
    y = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(y[y >= 0]))
    counts = pareto_counts(len(classes), max_count, min_count, alpha)
    keep = [rng.permutation(np.flatnonzero(y == c))[:n] for c, n in zip(classes, counts)]
    return np.sort(np.concatenate(keep))


def shot_accuracy(
    predictions: np.ndarray, labels: np.ndarray, train_counts: Dict[int, int], many: int = 100, few: int = 20
) -> Dict[str, float]:
    """Accuracy over all test samples and per shot group of their class's training count:
    many (> ``many``), medium, few (< ``few``); groups are averaged per class."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    per_class = {int(c): float((predictions[labels == c] == c).mean()) for c in np.unique(labels)}
    groups: Dict[str, list] = {"many": [], "medium": [], "few": []}
    for c, acc in per_class.items():
        n = train_counts.get(c, 0)
        groups["many" if n > many else "few" if n < few else "medium"].append(acc)
    out = {"accuracy": float((predictions == labels).mean())}
    out.update({f"{g}_accuracy": float(np.mean(v)) if v else float("nan") for g, v in groups.items()})
    return out


def open_set_scores(scores: np.ndarray, predictions: np.ndarray, labels: np.ndarray, threshold: Optional[float] = None) -> Dict[str, float]:
    """Open-set recognition by thresholding the best similarity.

    Args:
        scores: (Q,) best similarity of each query to the gallery.
        predictions: (Q,) the gallery class of that best match.
        labels: (Q,) true class, -1 for queries of unknown (unseen) classes.
        threshold: accept when score >= threshold; None picks the F-measure-maximizing one.

    Returns:
        auroc (known vs unknown by score), f_measure (micro F1 over known classes: a
        true positive is an accepted, correctly identified known query; accepting an
        unknown or a wrong class is a false positive; rejecting or misidentifying a known
        query is a false negative), the threshold and the closed-set accuracy.
    """
    scores, predictions, labels = map(np.asarray, (scores, predictions, labels))
    known = labels >= 0
    if known.all() or not known.any():
        raise ValueError("open-set scores need both known (label >= 0) and unknown (label -1) queries")
    auroc = float(roc_auc_score(known, scores))

    def f1(t: float) -> float:
        accept = scores >= t
        tp = float((accept & known & (predictions == labels)).sum())
        fp = float((accept & ~(known & (predictions == labels))).sum())
        fn = float((known & ~(accept & (predictions == labels))).sum())
        return 2 * tp / max(2 * tp + fp + fn, 1e-12)

    if threshold is None:
        candidates = np.unique(scores)
        values = [f1(t) for t in candidates]
        threshold = float(candidates[int(np.argmax(values))])
    return {"auroc": auroc, "f_measure": f1(threshold), "threshold": float(threshold),
            "closed_set_accuracy": float((predictions[known] == labels[known]).mean())}


@SUPERVISIONS.register("class_balanced")
def class_balanced(samples_per_class: int = 4) -> Supervision:
    """Class-balanced sampling: classes drawn uniformly, whatever their size."""
    return Supervision(None, 1.0, 0, samples_per_class)

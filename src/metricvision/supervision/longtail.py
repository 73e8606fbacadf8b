"""Long-tail and open-set settings: a Pareto long-tailed split, class-balanced sampling, and
open-set rejection by a similarity threshold fitted on validation queries. Their measures
(many / medium / few-shot accuracy, open-set F-measure, AUROC) are in ``metricvision.metrics``."""
from __future__ import annotations

import numpy as np
import torch

from metricvision.supervision.base import SUPERVISIONS, LabelsLike, Supervision

LT_ORDERS = ("random", "size")


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


def long_tail_subset(
    labels: LabelsLike, max_count: int, min_count: int = 1, alpha: float = 6.0, seed: int = 0, order: str = "random"
) -> np.ndarray:
    """Indices of a long-tailed subset: the classes, in ``order``, get ``pareto_counts`` samples
    (fewer when a class has fewer).

    Args:
        order: "random" (ImageNet-LT) or "size" (largest classes first, ties at random: keeps
            the profile when the classes are themselves unequal).
    """
    if order not in LT_ORDERS:
        raise ValueError(f"order must be one of {LT_ORDERS}, got '{order}'")
    y = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(y[y >= 0]))
    if order == "size":
        classes = classes[np.argsort([-np.sum(y == c) for c in classes], kind="stable")]
    counts = pareto_counts(len(classes), max_count, min_count, alpha)
    keep = [rng.permutation(np.flatnonzero(y == c))[:n] for c, n in zip(classes, counts)]
    return np.sort(np.concatenate(keep))


def reject_below(scores: torch.Tensor, classes: np.ndarray, threshold: float) -> np.ndarray:
    """Open-set prediction: the best-scoring class, or -1 ("unknown") when its score < threshold.

    Args:
        scores: (N, C) similarities to the known classes (e.g. ``metrics.classify.ncm_scores``).
        classes: (C,) class labels of the columns.
    """
    best, arg = scores.max(1)
    return np.where(best.numpy() < threshold, -1, np.asarray(classes)[arg.numpy()])


def fit_threshold(scores: torch.Tensor, classes: np.ndarray, labels: np.ndarray) -> float:
    """The rejection threshold maximizing balanced open-set accuracy on validation queries.

    Balanced open-set accuracy is the mean of the fraction of known queries accepted with the
    right class and the fraction of unknown queries rejected: it weighs the two kinds of
    queries equally whatever their numbers, which OLTR's open-set F-measure
    (``metrics.open_set_f_measure``, known samples are its positives) does not.

    Args:
        scores: (N, C) similarities of validation queries to the known classes.
        classes: (C,) class labels of the columns.
        labels: (N,) true labels, -1 for queries of unknown classes (both kinds needed).
    """
    labels = np.asarray(labels)
    known = labels >= 0
    if known.all() or not known.any():
        raise ValueError("fit_threshold needs both known (label >= 0) and unknown (label -1) queries")
    best = scores.max(1).values.numpy()
    right = np.asarray(classes)[scores.argmax(1).numpy()] == labels
    candidates = np.unique(best)
    accepted_right = [(right & known & (best >= t)).sum() / known.sum() for t in candidates]
    rejected_unknown = [(~known & (best < t)).sum() / (~known).sum() for t in candidates]
    return float(candidates[int(np.argmax(np.add(accepted_right, rejected_unknown)))])


@SUPERVISIONS.register("class_balanced")
def class_balanced(samples_per_class: int = 4) -> Supervision:
    """Class-balanced sampling: classes drawn uniformly, whatever their size."""
    return Supervision(None, 1.0, 0, samples_per_class)

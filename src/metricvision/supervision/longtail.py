"""Long-tail and open-set settings: class-balanced and instance sampling, and open-set rejection by a similarity
threshold fitted on validation queries; the Pareto long-tailed split is ``metricvision.data.longtail``
(re-exported here). Their measures (many / medium / few-shot accuracy, open-set F-measure, AUROC) are
in ``metricvision.metrics``; the OLTR meta-embedding is ``supervision/oltr.py``."""
from __future__ import annotations

from typing import Any, List

import numpy as np
import torch

from metricvision.data.longtail import LT_ORDERS, long_tail_subset, pareto_counts  # noqa: F401 (re-exported)
from metricvision.supervision.base import SUPERVISIONS, Supervision


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


@SUPERVISIONS.register("instance")
class InstanceSampling(Supervision):
    """Instance sampling: batches uniform over images, so classes come as often as the data has them."""

    def __init__(self) -> None:
        super().__init__(None, 1.0, 0, 1)

    def batch_sampler(self, trainer: Any, epoch: int) -> List[List[int]]:
        """As many batches as the Trainer's sampler gives, drawn from random permutations of the training set."""
        return self.instance_batch_sampler(trainer, epoch)

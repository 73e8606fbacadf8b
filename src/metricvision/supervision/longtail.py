"""Long-tail and open-set settings: class-balanced and instance sampling (which also score the loss's own classifier,
``classifier_*`` metrics, as OLTR's is scored), and open-set rejection by a similarity threshold fitted on validation
queries; the Pareto long-tailed split is ``metricvision.data.longtail`` (re-exported here). Their measures (many /
medium / few-shot accuracy, open-set F-measure, AUROC) are in ``metricvision.metrics``; the OLTR meta-embedding is
``supervision/oltr.py``."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from metricvision.data.longtail import LT_ORDERS, long_tail_subset, pareto_counts  # noqa: F401 (re-exported)
from metricvision.metrics import open_set_scores, shot_accuracy
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


def first_appearance(labels: List[int]) -> np.ndarray:
    """Labels in order of first appearance (-1 skipped): the column order of ``data.relabel``."""
    return np.array(list(dict.fromkeys(c for c in labels if c >= 0)))


def classifier_metrics(trainer: Any, predict: Callable[[torch.Tensor], torch.Tensor], name: str,
                       threshold: float) -> Optional[Dict[str, float]]:
    """Shot accuracy of a trained classifier on the main evaluation's "test" split, and its open-set F-measure and
    AUROC (softmax confidence over its logits, rejection below ``threshold``) when there is an "open" split.

    Args:
        predict: (N, D) embeddings on the trainer's device -> (N, C) logits, columns in the order of
            ``first_appearance`` of the training labels.
        name: the setting, for the warning when the evaluation has no train / test splits or other classes.

    Returns:
        the metrics, or None (after a warning) when they cannot be computed.
    """
    splits = trainer.eval_splits[""]  # the main evaluation (eval.also adds named ones)
    if "train" not in splits or "test" not in splits:
        trainer._warn(f"{name}: the evaluation dataset has no train / test splits; no classifier metrics")
        return None
    classes = first_appearance([s.label for s in splits["train"]])
    if len(classes) != trainer.num_classes:
        trainer._warn(f"{name}: the evaluation train split has {len(classes)} classes, the model {trainer.num_classes}; "
                      "no classifier metrics")
        return None
    train_y = np.array([s.label for s in splits["train"]])
    test_y = np.array([s.label for s in splits["test"]])
    scores = predict(trainer.embed(splits["test"]).to(trainer.device)).cpu()
    p = trainer.recipe.eval.params
    out = shot_accuracy(classes[scores.argmax(1).numpy()], test_y, train_y, p.get("many", 100), p.get("few", 20))
    if splits.get("open"):
        open_scores = predict(trainer.embed(splits["open"]).to(trainer.device)).cpu()
        labels = np.concatenate([test_y, np.full(len(open_scores), -1)])
        out.update(open_set_scores(torch.cat([scores, open_scores]), classes, labels, threshold, temperature=1.0))
    return out


class LongTailBaseline(Supervision):
    """A long-tail baseline: at the end, the loss's own classifier (``loss.predict``, e.g. normalized softmax's cosine
    classifier) is scored like OLTR's, as ``classifier_*`` metrics beside the protocol's nearest class mean.

    Args:
        samples_per_class: K of the P x K batches.
        threshold: open-set rejection below this softmax confidence (OLTR's 0.1).
    """

    def __init__(self, samples_per_class: int = 4, threshold: float = 0.1) -> None:
        super().__init__(None, 1.0, 0, samples_per_class)
        self.threshold = threshold

    def on_fit_end(self, trainer: Any, metrics: Dict[str, Any]) -> None:
        """Adds ``classifier_*`` metrics when the loss has a classifier (``predict``)."""
        if not hasattr(trainer.loss, "predict"):
            return
        loss = trainer.loss.eval()
        found = classifier_metrics(trainer, loss.predict, trainer.recipe.supervision.name, self.threshold)
        metrics.update({f"classifier_{k}": v for k, v in (found or {}).items()})
        loss.train()


@SUPERVISIONS.register("class_balanced")
class ClassBalanced(LongTailBaseline):
    """Class-balanced sampling: classes drawn uniformly, whatever their size."""


@SUPERVISIONS.register("instance")
class InstanceSampling(LongTailBaseline):
    """Instance sampling: batches uniform over images, so classes come as often as the data has them."""

    def __init__(self, threshold: float = 0.1) -> None:
        super().__init__(1, threshold)

    def batch_sampler(self, trainer: Any, epoch: int) -> List[List[int]]:
        """As many batches as the Trainer's sampler gives, drawn from random permutations of the training set."""
        return self.instance_batch_sampler(trainer, epoch)

"""The Supervision protocol: each setting is a source of targets, relevance and batches.

A supervision object plugs into the one Trainer. Before an epoch it may look at the
current embeddings of the training set (``refresh``: label propagation, manifold mining);
during the epoch it gives, for the dataset indices of a batch, the targets (labels and
per-sample weights) and the (B, B) relevance that a loss consumes; it may also decide
how batches are drawn (episodes, tasks, class-balanced sampling, mined tuples).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from metricvision._registry import Registry
from metricvision.similarity import relevance_from_labels

SUPERVISIONS: Registry["Supervision"] = Registry("supervision")


@dataclass
class Targets:
    """Targets of one batch.

    Attributes:
        labels: (B,) int64 labels, -1 where the sample has none (IGNORED by every loss).
        weights: (B,) float32 per-sample weights (1 for ground-truth labels).
    """

    labels: torch.Tensor
    weights: torch.Tensor


class Supervision:
    """Base supervision: the ground-truth labels, every sample weighted 1.

    Args:
        labels: (N,) int labels of the training set, -1 for unlabeled samples.

    Attributes:
        needs_embeddings: the Trainer must call ``refresh`` with the current (N, D)
            embeddings of the training set at the start of each epoch.
    """

    needs_embeddings: bool = False

    def __init__(self, labels: Sequence[int] | np.ndarray | torch.Tensor) -> None:
        self.labels_ = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
        self.weights_ = torch.ones(self.labels_.shape[0])

    def __len__(self) -> int:
        return int(self.labels_.shape[0])

    def refresh(self, embeddings: torch.Tensor) -> Dict[str, float]:
        """Update the targets from (N, D) embeddings of the training set; returns logs."""
        return {}

    def on_epoch_start(self, trainer: Any) -> Dict[str, float]:
        """Trainer hook: refresh from the current embeddings when the setting needs them."""
        if not self.needs_embeddings:
            return {}
        return self.refresh(trainer.embed_train())

    def targets(self, indices: torch.Tensor) -> Targets:
        """Labels and weights of the samples at dataset ``indices`` (B,)."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        return Targets(self.labels_[idx], self.weights_[idx])

    def relevance(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, B) int8 relevance among the batch; a sample never counts itself."""
        t = self.targets(indices)
        return relevance_from_labels(t.labels, t.labels, exclude_self=True)

    def batches(self, batch_size: int, generator: Optional[torch.Generator] = None) -> Optional[Iterator[List[int]]]:
        """Batches of dataset indices for one epoch, or None to let the Trainer's sampler decide."""
        return None


@SUPERVISIONS.register("supervised")
def supervised(labels: Sequence[int] | np.ndarray | torch.Tensor) -> Supervision:
    """Plain labels (unlabeled samples, -1, are ignored)."""
    return Supervision(labels)


def keep_fraction_of_labels(labels: np.ndarray, fraction: float, seed: int = 0, min_per_class: int = 1) -> np.ndarray:
    """Hide labels: keep ``fraction`` of the samples of every class labeled, the rest -1.

    Keeping a fraction of each class (at least ``min_per_class``) suits metric learning with
    class-disjoint test sets: every training identity contributes some labeled positives.

    Args:
        labels: (N,) int labels.
        fraction: in (0, 1].
        seed: random seed.
        min_per_class: labeled samples kept per class at least.

    Returns:
        (N,) int64 labels with the hidden ones set to -1.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    out = np.full_like(labels, -1)
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == c)
        n = min(len(idx), max(min_per_class, int(round(fraction * len(idx)))))
        keep = rng.choice(idx, size=n, replace=False)
        out[keep] = c
    return out

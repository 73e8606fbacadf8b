"""The Supervision protocol: each setting is a source of targets, relevance and batches.

A supervision object plugs into the one Trainer through its hooks:
``on_fit_start(trainer)`` binds the training labels (hiding some when ``label_fraction``
< 1); ``on_epoch_start(trainer, epoch)`` refreshes the targets from the current
embeddings of the training set when the setting needs them (label propagation, manifold
mining); ``batch_sampler(trainer, epoch)`` draws the epoch's batches from the current
targets, a sample's weight being its probability of being drawn within its class (so
certainty and class-balance weights need no change to any loss); ``targets(trainer,
indices, labels)`` gives the labels the loss sees (-1 = IGNORED).

The same objects work without a Trainer: ``bind(labels)``, ``refresh(embeddings)``,
``lookup(indices) -> Targets``, ``relevance(indices) -> (B, B)``, ``batches(...)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from metricvision._registry import Registry
from metricvision.similarity import relevance_from_labels

SUPERVISIONS: Registry["Supervision"] = Registry("supervision")
LabelsLike = Sequence[int] | np.ndarray | torch.Tensor
LABEL_MODES = ("per_class", "random")


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
    """Base supervision: the ground-truth labels (optionally a fraction of them), weight 1.

    Args:
        labels: (N,) int labels of the training set, -1 for unlabeled; None to bind later
            (the Trainer binds its training labels in ``on_fit_start``).
        label_fraction: keep the labels of this fraction of the samples.
        label_seed: seed of the choice of kept labels.
        label_mode: "per_class" (that fraction of every class, at least one) or "random"
            (that fraction of all samples, some classes keep none).
        samples_per_class: K of the P x K batches drawn by ``batches``.

    Attributes:
        needs_embeddings: ``refresh`` must see the current (N, D) training embeddings.
        refresh_every: refresh at epochs 0, refresh_every, 2 * refresh_every, ...
    """

    needs_embeddings: bool = False
    refresh_every: int = 1

    def __init__(
        self,
        labels: Optional[LabelsLike] = None,
        label_fraction: float = 1.0,
        label_seed: int = 0,
        samples_per_class: int = 4,
        label_mode: str = "per_class",
    ) -> None:
        if label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {LABEL_MODES}, got '{label_mode}'")
        self.label_mode = label_mode
        if not 0 < label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}")
        if samples_per_class < 1:
            raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class}")
        self.label_fraction, self.label_seed, self.samples_per_class = label_fraction, label_seed, samples_per_class
        self.labels_: Optional[torch.Tensor] = None
        if labels is not None:
            self.bind(labels)

    def bind(self, labels: LabelsLike) -> None:
        """Set the (N,) training labels (hiding all but ``label_fraction`` of each class)."""
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
        if self.label_fraction < 1:
            y = keep_fraction_of_labels(y, self.label_fraction, self.label_seed, self.label_mode == "per_class")
        self.given_ = torch.from_numpy(y)
        self.labels_ = self.given_.clone()
        self.weights_ = (self.given_ >= 0).float()

    def __len__(self) -> int:
        return 0 if self.labels_ is None else int(self.labels_.shape[0])

    def refresh(self, embeddings: torch.Tensor) -> Dict[str, float]:
        """Update the targets from (N, D) embeddings of the training set; returns logs."""
        return {}

    def lookup(self, indices: torch.Tensor) -> Targets:
        """Labels and weights of the samples at dataset ``indices`` (B,)."""
        if self.labels_ is None:
            raise RuntimeError("supervision has no labels yet: call bind(labels) first")
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        return Targets(self.labels_[idx], self.weights_[idx])

    def relevance(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, B) int8 relevance among the batch; a sample never counts itself."""
        t = self.lookup(indices)
        return relevance_from_labels(t.labels, t.labels, exclude_self=True)

    def batches(self, batch_size: int, num_batches: int, generator: Optional[torch.Generator] = None) -> List[List[int]]:
        """P x K batches over the current targets; within a class, drawn in proportion to weight."""
        if self.labels_ is None:
            raise RuntimeError("supervision has no labels yet: call bind(labels) first")
        return weighted_pk_batches(self.labels_, self.weights_, batch_size, self.samples_per_class, num_batches, generator)

    # ---- Trainer hooks ---------------------------------------------------------------------
    def on_fit_start(self, trainer: Any) -> None:
        """Bind the Trainer's training labels unless labels were given."""
        if self.labels_ is None:
            self.bind([s.label for s in trainer.train_samples])

    def refresh_due(self, epoch: int) -> bool:
        """Whether the targets are refreshed from the embeddings at the start of ``epoch``."""
        return self.needs_embeddings and epoch % self.refresh_every == 0

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        """Refresh from the current training embeddings when the setting needs them."""
        if self.refresh_due(epoch):
            logs = self.refresh(trainer.embed(trainer.train_samples))
            trainer._log({"event": "supervision", "epoch": epoch, **logs})

    def batch_sampler(self, trainer: Any, epoch: int) -> List[List[int]]:
        """The epoch's batches (as many as the Trainer's own sampler would give)."""
        return self.batches(trainer.recipe.data.batch_size, len(trainer.sampler), epoch_generator(trainer, epoch))

    def instance_batch_sampler(self, trainer: Any, epoch: int) -> List[List[int]]:
        """The epoch's batches uniform over the training samples (instance sampling; as many as ``batch_sampler``)."""
        return instance_batches(len(self), trainer.recipe.data.batch_size, len(trainer.sampler), epoch_generator(trainer, epoch))

    def targets(self, trainer: Any, indices: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Labels the loss sees for the batch at ``indices``."""
        return self.lookup(indices).labels


@SUPERVISIONS.register("partial_labels")
def partial_labels(
    label_fraction: float = 1.0, label_seed: int = 0, samples_per_class: int = 4, label_mode: str = "per_class"
) -> Supervision:
    """Labeled samples only: a fraction of the samples keeps its label, the rest is unused."""
    return Supervision(None, label_fraction, label_seed, samples_per_class, label_mode)


def epoch_generator(trainer: Any, epoch: int) -> torch.Generator:
    """The random generator of an epoch's batches: a function of (train.seed, epoch), so a resumed run replays them."""
    return torch.Generator().manual_seed(trainer.recipe.train.seed * 1000003 + epoch)


def instance_batches(n: int, batch_size: int, num_batches: int, generator: torch.Generator) -> List[List[int]]:
    """``num_batches`` batches of ``batch_size`` indices in [0, n), uniform over samples (random permutations, chained)."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"instance batches need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    need = num_batches * batch_size
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(-(-need // n))])[:need]
    return order.view(num_batches, batch_size).tolist() if num_batches else []


def weighted_pk_batches(
    labels: torch.Tensor,
    weights: torch.Tensor,
    batch_size: int,
    k: int,
    num_batches: int,
    generator: Optional[torch.Generator] = None,
) -> List[List[int]]:
    """Batches of P classes x K samples; classes uniformly, samples in proportion to weight.

    Classes are drawn uniformly (the class-balanced sampling of long-tail learning);
    samples with weight 0 or label -1 are never drawn; a class with fewer than K drawable
    samples is drawn with replacement.

    Args:
        labels: (N,) int labels.
        weights: (N,) non-negative weights.
        batch_size: P * K.
        k: samples per class.
        num_batches: batches to return.
    """
    if k < 1 or batch_size % k:
        raise ValueError(f"batch_size must be a positive multiple of k, got batch_size={batch_size}, k={k}")
    usable = (labels >= 0) & (weights > 0)
    classes = torch.unique(labels[usable])
    p = batch_size // k
    if len(classes) < p:
        raise ValueError(f"batch needs {p} classes with a label and a positive weight, found {len(classes)}")
    members = {int(c): usable.logical_and(labels == c).nonzero().squeeze(1) for c in classes}
    out: List[List[int]] = []
    order: List[int] = []
    for _ in range(num_batches):
        if len(order) < p:  # a fresh permutation keeps the classes of a batch distinct
            order = classes[torch.randperm(len(classes), generator=generator)].tolist()
        chosen, order = order[:p], order[p:]
        batch: List[int] = []
        for c in chosen:
            idx = members[c]
            w = weights[idx].double()
            pick = torch.multinomial(w, k, replacement=len(idx) < k, generator=generator)
            batch += idx[pick].tolist()
        out.append(batch)
    return out


def keep_fraction_of_labels(labels: np.ndarray, fraction: float, seed: int = 0, per_class: bool = True) -> np.ndarray:
    """Hide labels: keep ``fraction`` of the samples labeled, the rest -1.

    With ``per_class`` every class keeps round(fraction * n_c) of its samples, at least
    one, so every training identity contributes labeled samples; otherwise a random
    ``fraction`` of all samples keeps its label.

    Args:
        labels: (N,) int labels.
        fraction: in (0, 1].
        seed: random seed.

    Returns:
        (N,) int64 labels with the hidden ones set to -1.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    out = np.full_like(labels, -1)
    if not per_class:
        idx = np.flatnonzero(labels >= 0)
        keep = rng.choice(idx, size=int(round(fraction * len(idx))), replace=False)
        out[keep] = labels[keep]
        return out
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == c)
        n = min(len(idx), max(1, int(round(fraction * len(idx)))))
        out[rng.choice(idx, size=n, replace=False)] = c
    return out

"""Semi-supervised metric learning by label propagation (a simplified Iscen et al., CVPR 2019).

At the start of every ``refresh_every``-th epoch: a k-NN graph on the current embeddings of the
training set (similarities^gamma, W + W^T, symmetric normalization), diffusion of the
class-size-normalized one-hot labels with conjugate gradient, pseudo-labels = argmax, certainty
w_i = 1 - H(Z_i) / log(C) divided by its maximum over the samples (as the authors' code), and
inverse class frequencies as class weights. Labeled samples keep their label with certainty 1.
Where the paper weights each sample's loss by w_i (and each class by its weight), here the weights
are sampling probabilities within a class and classes are drawn uniformly (``weighted_pk_batches``),
so any metric loss trains on them unchanged and the classes are balanced by the sampling itself.
The paper first trains on the labeled samples alone, then propagates; here, within one schedule, the
first ``start_epoch`` epochs train on the labeled samples alone (0: the first propagation runs on the
initial, pretrained embeddings).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from metricvision.index.diffusion import diffuse
from metricvision.supervision.base import SUPERVISIONS, LabelsLike, Supervision
from metricvision.supervision.graph import knn_graph, normalize_affinity


@dataclass
class Propagated:
    """Result of label propagation.

    Attributes:
        labels: (N,) int64 pseudo-labels (ground truth where labeled).
        certainty: (N,) float 1 - H(p) / log(C), 1 on labeled samples.
        class_weights: (C,) float inverse class frequency, mean 1 over classes.
        scores: (N, C) diffused class scores.
    """

    labels: torch.Tensor
    certainty: torch.Tensor
    class_weights: torch.Tensor
    scores: torch.Tensor


def propagate_labels(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    k: int = 50,
    gamma: float = 3.0,
    alpha: float = 0.99,
    max_iter: int = 20,
) -> Propagated:
    """Label propagation on the k-NN graph of ``embeddings``.

    Args:
        embeddings: (N, D) embeddings.
        labels: (N,) int labels, -1 for unlabeled.
        num_classes: C; labels are in [0, C).
        k, gamma: graph parameters (see ``knn_graph``).
        alpha: diffusion parameter in (0, 1).
        max_iter: conjugate-gradient iterations.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"labels ({labels.shape[0]}) and embeddings ({embeddings.shape[0]}) differ in length")
    if labels.numel() and int(labels.max()) >= num_classes:
        raise ValueError(f"label {int(labels.max())} out of range for num_classes={num_classes}")
    n = labels.shape[0]
    labeled = labels >= 0
    Wn = normalize_affinity(knn_graph(embeddings, k, gamma))
    Y = torch.zeros(n, num_classes)
    Y[labeled.nonzero().squeeze(1), labels[labeled]] = 1.0
    Y = Y / Y.sum(0, keepdim=True).clamp_min(1.0)
    Z = diffuse(Wn, Y, alpha, max_iter=max_iter).clamp_min(0.0)
    p = Z / Z.sum(1, keepdim=True).clamp_min(1e-12)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(1)
    certainty = 1.0 - entropy / math.log(max(num_classes, 2))
    # nodes the diffusion never reached carry no information
    certainty = torch.where(Z.sum(1) > 0, certainty, torch.zeros_like(certainty))
    certainty = certainty / certainty.max().clamp_min(1e-12)
    pseudo = Z.argmax(1)
    pseudo[labeled] = labels[labeled]
    certainty[labeled] = 1.0
    counts = torch.bincount(pseudo, minlength=num_classes).float()
    class_weights = torch.where(counts > 0, n / (num_classes * counts.clamp_min(1.0)), torch.zeros_like(counts))
    return Propagated(pseudo, certainty, class_weights, Z)


@SUPERVISIONS.register("label_propagation")
class LabelPropagation(Supervision):
    """Pseudo-labels by label propagation, refreshed from the embeddings each epoch.

    Until the first ``refresh`` only the labeled samples have targets. With
    ``class_balance`` the weights include the inverse class frequency; ``batches`` draws
    classes uniformly, which balances classes already, so recipes may turn it off.

    Args:
        labels, label_fraction, label_seed, samples_per_class, label_mode: see ``Supervision``.
        k: neighbours in the graph.
        gamma: similarity power.
        alpha: diffusion parameter.
        max_iter: conjugate-gradient iterations.
        class_balance: multiply weights by the inverse class frequency.
        refresh_every: propagate again every this many epochs (the pseudo-labels of the
            epochs between are those of the last propagation).
        keep: fraction of the unlabeled samples, the most certain, that take their pseudo-label;
            the others stay unlabeled until the next propagation (1.0: all of them).
        start_epoch: epochs trained on the labeled samples alone before the first propagation.
    """

    needs_embeddings = True

    def __init__(
        self,
        labels: Optional[LabelsLike] = None,
        label_fraction: float = 1.0,
        label_seed: int = 0,
        samples_per_class: int = 4,
        label_mode: str = "per_class",
        k: int = 50,
        gamma: float = 3.0,
        alpha: float = 0.99,
        max_iter: int = 20,
        class_balance: bool = True,
        refresh_every: int = 1,
        keep: float = 1.0,
        start_epoch: int = 0,
    ) -> None:
        if start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch}")
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
        if not 0 < keep <= 1:
            raise ValueError(f"keep must be in (0, 1], got {keep}")
        self.keep = keep
        self.k, self.gamma, self.alpha, self.max_iter = k, gamma, alpha, max_iter
        self.refresh_every, self.start_epoch = refresh_every, start_epoch
        self.class_balance = class_balance
        self.restored_: Dict[str, torch.Tensor] = {}  # checkpoint_state of a resumed run, applied in on_fit_start
        super().__init__(labels, label_fraction, label_seed, samples_per_class, label_mode)

    def bind(self, labels: LabelsLike) -> None:
        """Set the training labels (-1 = unlabeled)."""
        super().bind(labels)
        if not bool((self.given_ >= 0).any()):
            raise ValueError("label propagation needs at least one labeled sample, got none")
        self.num_classes = int(self.given_.max()) + 1

    def refresh_due(self, epoch: int) -> bool:
        """Propagate at ``start_epoch`` and every ``refresh_every`` epochs after it."""
        return epoch >= self.start_epoch and (epoch - self.start_epoch) % self.refresh_every == 0

    def refresh(self, embeddings: torch.Tensor) -> Dict[str, float]:
        """Propagate the given labels on the (N, D) embeddings; returns logs."""
        out = propagate_labels(embeddings, self.given_, self.num_classes, self.k, self.gamma, self.alpha, self.max_iter)
        unlabeled = self.given_ < 0
        labels, weights = out.labels.clone(), out.certainty.clone()
        if self.keep < 1 and unlabeled.any():
            cut = torch.quantile(out.certainty[unlabeled].float(), 1 - self.keep)
            dropped = unlabeled & (out.certainty < cut)
            labels[dropped], weights[dropped] = -1, 0.0
        if self.class_balance:
            weights = weights * out.class_weights[out.labels]
        self.labels_, self.weights_ = labels, weights
        return {"pseudo_certainty": float(out.certainty[unlabeled].mean()) if unlabeled.any() else 1.0}

    def on_fit_start(self, trainer: Any) -> None:
        """Bind the training labels, then the pseudo-labels of a resumed run (used until the next refresh)."""
        super().on_fit_start(trainer)
        if "labels" in self.restored_:
            self.labels_, self.weights_ = self.restored_["labels"], self.restored_["weights"]

    def checkpoint_state(self) -> Dict[str, torch.Tensor]:
        """The (N,) pseudo-labels and weights of the last refresh."""
        return {} if self.labels_ is None else {"labels": self.labels_, "weights": self.weights_}

    def restore_state(self, state: Dict[str, torch.Tensor]) -> None:
        """Keep a checkpoint's state until ``on_fit_start`` has bound the labels."""
        self.restored_ = dict(state)

"""Long-tail and open-set recognition with a (simplified) OLTR meta-embedding, through the Trainer.

The recipe's loss is ``oltr_meta_embedding`` (``losses/meta_embedding.py``). As OLTR, training has two
stages: the first ``plain_epochs`` train the plain model (the cosine-norm classifier on the direct
feature, no memory) on instance-sampled batches (uniform over images); the rest draw class-balanced
P x K batches (OLTR's class-aware sampling) and refresh the loss's memory of class
centroids from the current training embeddings at the start of every epoch, or, when the loss learns
its centroids (``centroid_lr`` > 0, as OLTR), set them once, at the start of the second stage, from the
class means of the plain model, as OLTR initializes them. At the end it scores
the meta-embedding classifier beside the protocol's nearest-class-mean baseline: many / medium /
few-shot accuracy on "test", and, when the dataset has an "open" split, open-set F-measure and
AUROC with the softmax confidence (which the reachability lowers far from every centroid).
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from metricvision.supervision.base import SUPERVISIONS, Supervision
from metricvision.supervision.longtail import classifier_metrics


def class_centroids(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, D) mean of the (N, D) embeddings of each class 0..C-1 (labels -1 skipped; zeros for an empty class)."""
    keep = labels >= 0
    sums = torch.zeros(num_classes, embeddings.shape[1]).index_add_(0, labels[keep], embeddings[keep].float())
    return sums / torch.bincount(labels[keep], minlength=num_classes).clamp_min(1)[:, None]


@SUPERVISIONS.register("oltr")
class OLTR(Supervision):
    """Class-balanced batches, per-epoch class centroids for the meta-embedding loss, OLTR metrics at the end.

    Args:
        samples_per_class: K of the class-balanced P x K batches.
        threshold: open-set rejection below this softmax confidence (OLTR: 0.1).
        plain_epochs: epochs of OLTR's first stage (instance sampling, no memory) before the meta-embedding.
    """

    def __init__(self, samples_per_class: int = 4, threshold: float = 0.1, plain_epochs: int = 0) -> None:
        super().__init__(None, 1.0, 0, samples_per_class)
        if plain_epochs < 0:
            raise ValueError(f"plain_epochs must be >= 0, got {plain_epochs}")
        self.threshold, self.plain_epochs = threshold, plain_epochs

    def on_fit_start(self, trainer: Any) -> None:
        """Bind the labels; the recipe's loss must hold the meta-embedding."""
        if not hasattr(trainer.loss, "set_centroids"):
            raise ValueError(f"supervision 'oltr' needs loss.name=oltr_meta_embedding, got '{trainer.recipe.loss.name}'")
        super().on_fit_start(trainer)

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        """Refresh the centroid memory from the current (N, D) training embeddings (second stage; once if learned)."""
        if epoch >= self.plain_epochs and self.memory_from_means(trainer):
            self.set_memory(trainer, trainer.embed(trainer.train_samples))

    @staticmethod
    def memory_from_means(trainer: Any) -> bool:
        """Whether the memory is (re)set from class means now: always, unless the loss learns centroids it already has."""
        return not (getattr(trainer.loss, "learns_centroids", False) and bool(trainer.loss.has_centroids))

    def batch_sampler(self, trainer: Any, epoch: int) -> List[List[int]]:
        """Instance-sampled batches in the first stage, class-balanced P x K batches after."""
        if epoch >= self.plain_epochs:
            return super().batch_sampler(trainer, epoch)
        return self.instance_batch_sampler(trainer, epoch)

    def set_memory(self, trainer: Any, embeddings: torch.Tensor) -> None:
        """Class centroids of the training ``embeddings`` into the loss's memory."""
        trainer.loss.set_centroids(class_centroids(embeddings, self.labels_, trainer.num_classes).to(trainer.device))

    def on_fit_end(self, trainer: Any, metrics: Dict[str, Any]) -> None:
        """Adds ``oltr_*`` metrics: shot accuracy of the classifier, and open-set scores with an "open" split."""
        if self.memory_from_means(trainer):
            self.set_memory(trainer, trainer.embed(trainer.train_samples))
        loss = trainer.loss.eval()
        found = classifier_metrics(trainer, loss.predict, "oltr", self.threshold)
        metrics.update({f"oltr_{k}": v for k, v in (found or {}).items()})
        loss.train()

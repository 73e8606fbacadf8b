"""iCaRL (Rebuffi et al., CVPR 2017) through the Trainer, on the same task sequence as
``incremental_metric``: a linear classifier over the seen classes on the embeddings, trained with
iCaRL's binary cross-entropy whose old-class targets are the previous step's outputs (here the
previous classifier on the embeddings cached at the end of the previous task, eval transform),
exemplars by herding and the nearest-mean-of-exemplars classifier (and SDC) as ``IncrementalMetric``.
The recipe's metric loss sees no labels (iCaRL learns by classification only).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metricvision.losses import LossOutput
from metricvision.supervision.base import SUPERVISIONS
from metricvision.supervision.incremental import icarl_loss
from metricvision.supervision.incremental_metric import IncrementalMetric


@SUPERVISIONS.register("icarl")
class ICaRL(IncrementalMetric, nn.Module):
    """iCaRL's classification loss in place of the metric loss; NME / SDC evaluation per task.

    Args:
        test_fraction, seed: see ``IncrementalMetric``.
        scale: the embeddings (unit vectors) are multiplied by it before the classifier, so that
            the sigmoid of iCaRL's loss does not saturate.
    """

    def __init__(self, test_fraction: float = 1 / 3, seed: int = 0, scale: float = 10.0) -> None:
        nn.Module.__init__(self)
        IncrementalMetric.__init__(self, test_fraction, seed)
        self.scale = scale
        self.classifier: Optional[nn.Linear] = None
        self.old_classifier_: Optional[tuple] = None  # (weight, bias) of the previous task: in checkpoint_state

    def setup(self, trainer: Any) -> None:
        """The classifier over all training classes (only the seen ones are scored)."""
        self.classifier = nn.Linear(trainer.model.dim, trainer.num_classes)

    def targets(self, trainer: Any, indices: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """No labels for the recipe's metric loss."""
        return torch.full_like(labels, -1)

    def extra_loss(self, trainer: Any, indices: torch.Tensor, embeddings: torch.Tensor) -> LossOutput:
        """iCaRL's loss over the classes seen up to the current task (old ones first)."""
        t = self.task(trainer.epoch)
        seen = torch.from_numpy(np.concatenate(self.tasks_[: t + 1])).to(embeddings.device)
        position = torch.full((self.classifier.out_features,), -1, dtype=torch.int64, device=embeddings.device)
        position[seen] = torch.arange(len(seen), device=embeddings.device)
        y = position[torch.as_tensor(self.labels_[indices.cpu().numpy()], device=embeddings.device)]
        logits = self.classifier(self.scale * embeddings)[:, seen]
        old = None
        if self.old_classifier_ is not None and self.previous_ is not None:
            n_old = sum(len(c) for c in self.tasks_[:t])
            with torch.no_grad():
                w, b = self.old_classifier_
                old = F.linear(self.scale * self.previous_[indices.cpu()].to(embeddings.device), w, b)[:, seen[:n_old]]
        loss = icarl_loss(logits, y, old)
        return LossOutput(loss, {"icarl": float(loss.detach())})

    def checkpoint_state(self) -> Dict[str, torch.Tensor]:
        """``IncrementalMetric``'s state and the previous task's classifier."""
        state = super().checkpoint_state()
        if self.old_classifier_ is not None:
            state["old_weight"], state["old_bias"] = self.old_classifier_
        return state

    def _restore(self, state: Dict[str, torch.Tensor]) -> None:
        super()._restore(state)
        if "old_weight" in state:
            device = self.classifier.weight.device
            self.old_classifier_ = (state["old_weight"].to(device), state["old_bias"].to(device))

    def on_epoch_end(self, trainer: Any, epoch: int, record: Dict[str, float]) -> None:
        """At the end of a task, also keep the classifier as the next task's distillation target."""
        super().on_epoch_end(trainer, epoch, record)
        if epoch % self.config.epochs_per_task == 0:
            self.old_classifier_ = (self.classifier.weight.detach().clone(), self.classifier.bias.detach().clone())

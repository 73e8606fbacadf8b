"""Dense classification (Lifchitz et al., "Dense Classification and Implanting for Few-Shot
Learning", CVPR 2019) as a Trainer hook: every location of the backbone's feature maps is
classified into the image's class by a cosine classifier, and the backbone itself learns from it.

The maps are those of the training forward pass (kept by a forward hook on the backbone, no
second pass); they must be at least ``min_size`` x ``min_size`` (the paper: inputs large enough,
or the last stride removed, ``model.last_stride=1``). The term is added, times ``weight``, to the
recipe's loss on the pooled embeddings.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from metricvision.losses import LossOutput
from metricvision.supervision.base import SUPERVISIONS
from metricvision.supervision.fewshot import CosineClassifier, dense_classification_loss


@SUPERVISIONS.register("dense_classification")
class DenseClassification(nn.Module):
    """Hook adding ``weight`` x the dense classification loss of the backbone's (B, C, h, w) maps.

    Args:
        weight: factor of the dense term.
        scale: logit scale of the cosine classifier (one weight per training class).
        min_size: smallest map side accepted.
    """

    def __init__(self, weight: float = 1.0, scale: float = 10.0, min_size: int = 5) -> None:
        super().__init__()
        self.weight, self.scale, self.min_size = weight, scale, min_size
        self.classifier: Optional[CosineClassifier] = None
        self.maps_: Optional[torch.Tensor] = None

    def setup(self, trainer: Any) -> None:
        """Check the map size, create the classifier and keep the backbone's maps of every forward."""
        size = trainer.recipe.data.image_size
        h, w = (size, size) if isinstance(size, int) else size
        model = trainer.model
        if model.taps:
            raise ValueError(f"dense classification trains the backbone's last maps; model.taps must be empty, got {list(model.taps)}")
        was = model.training
        with torch.no_grad():
            maps = model.eval().features(torch.zeros(1, 3, h, w, device=next(model.parameters()).device))
        model.train(was)
        if min(maps.shape[-2:]) < self.min_size:
            raise ValueError(f"dense classification needs maps of at least {self.min_size} x {self.min_size}, got "
                             f"{maps.shape[-2]} x {maps.shape[-1]} at data.image_size={size}; use larger images or model.last_stride=1")
        self.classifier = CosineClassifier(trainer.num_classes, maps.shape[1], self.scale)
        self.labels_ = torch.tensor([s.label for s in trainer.train_samples])
        model.backbone.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self.maps_ = output

    def extra_loss(self, trainer: Any, indices: torch.Tensor, embeddings: torch.Tensor) -> LossOutput:
        """``weight`` x cross-entropy of every location of the batch's maps against its image's label."""
        if self.classifier is None or self.maps_ is None:
            raise RuntimeError("dense classification: setup(trainer) and a forward pass must come first")
        loss = dense_classification_loss(self.maps_.float(), self.labels_[indices.cpu()].to(embeddings.device), self.classifier)
        return LossOutput(self.weight * loss, {"dense": float(loss.detach())})

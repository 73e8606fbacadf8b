"""The loss interface: every loss is a function of a similarity matrix and a relevance mask.

``MetricLoss.forward(embeddings, labels, ref_embeddings=None, ref_labels=None)`` builds
S = similarity(embeddings, references) and the relevance, then calls
``compute(S, relevance)``. The references decide the family: the batch itself (pair
losses), a memory or another modality (passed as ``ref_embeddings``), or learned class
weights / proxies (``ProxyLoss``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

from metricvision._registry import Registry
from metricvision.similarity import relevance_from_labels, similarity

LOSSES: Registry["MetricLoss"] = Registry("loss")


@dataclass
class LossOutput:
    """A loss value plus scalars worth logging."""

    value: torch.Tensor
    logs: Dict[str, float] = field(default_factory=dict)


def zero_loss(S: torch.Tensor) -> torch.Tensor:
    """A zero that keeps the graph, for batches with no valid pair or triplet."""
    return S.sum() * 0.0


class MetricLoss(nn.Module):
    """Base class: subclasses implement ``compute(S, relevance)``.

    Attributes:
        similarity_kind: how S is built ("cosine", "dot", "neg_sq_euclidean").
    """

    similarity_kind: str = "cosine"

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: Optional[torch.Tensor] = None,
        ref_labels: Optional[torch.Tensor] = None,
    ) -> LossOutput:
        """Loss of (B, D) embeddings with (B,) labels against the references.

        Without references the batch is its own reference set and the diagonal is ignored.
        """
        if ref_embeddings is None:
            ref_embeddings, ref_labels, exclude_self = embeddings, labels, True
        else:
            if ref_labels is None:
                raise ValueError("ref_labels is required when ref_embeddings is given")
            exclude_self = False
        S = similarity(embeddings, ref_embeddings, self.similarity_kind)
        relevance = relevance_from_labels(labels, ref_labels, exclude_self=exclude_self)
        return self.compute(S, relevance)

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        """Loss from (Q, R) similarities and (Q, R) relevance."""
        raise NotImplementedError

    def own_lr_parameters(self) -> List[nn.Parameter]:
        """Parameters (proxies, class weights) that the Trainer gives their own learning rate."""
        return [p for p in self.parameters() if p.requires_grad]


class ProxyLoss(MetricLoss):
    """A loss whose references are learned class weights / proxies, one per class.

    Args:
        num_classes: number of training classes C.
        embedding_dim: D.
    """

    def __init__(self, num_classes: int, embedding_dim: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.proxies = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: Optional[torch.Tensor] = None,
        ref_labels: Optional[torch.Tensor] = None,
    ) -> LossOutput:
        """Loss of (B, D) embeddings against the (C, D) proxies; extra references are ignored."""
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise ValueError(f"label {int(labels.max())} out of range for num_classes={self.num_classes}")
        S = similarity(embeddings, self.proxies.to(embeddings.dtype), self.similarity_kind)
        classes = torch.arange(self.num_classes, device=labels.device)
        return self.compute(S, relevance_from_labels(labels, classes))

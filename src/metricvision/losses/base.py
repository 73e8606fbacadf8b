"""The loss interface: every loss is a function of a similarity matrix and a relevance mask.

``MetricLoss.forward(embeddings, labels, ref_embeddings=None, ref_labels=None)`` builds
S = similarity(embeddings, references) and the relevance, then calls
``compute(S, relevance)``. The references decide the family: the batch itself (pair
losses), a memory or another modality (passed as ``ref_embeddings``), or learned class
weights / proxies (``ProxyLoss``).

Mining: a loss built with ``miner=`` (a :class:`metricvision.miners.Miner` or a name
registered in ``MINERS``) hands S (detached) and the relevance to the miner before
``compute``; the miner marks every pair it does not keep as IGNORED, and triplet losses
also ask it which (anchor, positive, negative) triplets to keep (``Miner.triplet_mask``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import torch
from torch import nn

from metricvision._registry import Registry
from metricvision.miners import Miner, create_miner
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

    Args:
        miner: optional miner (instance or registered name) applied to the relevance.

    Attributes:
        similarity_kind: how S is built ("cosine", "dot", "neg_sq_euclidean").
    """

    similarity_kind: str = "cosine"

    def __init__(self, miner: Union[Miner, str, None] = None) -> None:
        super().__init__()
        self.miner: Optional[Miner] = create_miner(miner) if isinstance(miner, str) else miner

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: Optional[torch.Tensor] = None,
        ref_labels: Optional[torch.Tensor] = None,
        *,
        query_ids: Optional[torch.Tensor] = None,
        reference_ids: Optional[torch.Tensor] = None,
    ) -> LossOutput:
        """Loss of (B, D) embeddings with (B,) labels against the references.

        Without references the batch is its own reference set and the diagonal is ignored.
        With ids (B,) and (R,), every pair whose ids are equal is ignored (a memory that
        holds the current batch).
        """
        if ref_embeddings is None:
            ref_embeddings, ref_labels, exclude_self = embeddings, labels, True
        else:
            if ref_labels is None:
                raise ValueError("ref_labels is required when ref_embeddings is given")
            exclude_self = False
        S = similarity(embeddings, ref_embeddings.to(embeddings.dtype), self.similarity_kind)
        relevance = relevance_from_labels(
            labels, ref_labels, exclude_self=exclude_self, query_ids=query_ids, reference_ids=reference_ids
        )
        return self.compute(S, self.mine(S, relevance))

    def mine(self, S: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        """(Q, R) relevance restricted to the pairs the miner keeps (unchanged without one)."""
        if self.miner is None:
            return relevance
        return self.miner(S.detach(), relevance)

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        """Loss from (Q, R) similarities and (Q, R) relevance."""
        raise NotImplementedError

    def own_lr_parameters(self) -> List[nn.Parameter]:
        """Parameters (proxies, class weights) that the Trainer gives their own learning rate."""
        return [p for p in self.parameters() if p.requires_grad]


class ProxyLoss(MetricLoss):
    """A loss whose references are learned class weights / proxies, one or more per class.

    With ``centers_per_class`` K > 1 the (C * K, D) proxies are scored and pooled to one
    column per class (``pool_centers``, max by default as in sub-center ArcFace).
    Extra references (a memory of past embeddings) are appended as more columns.

    Args:
        num_classes: number of training classes C.
        embedding_dim: D.
        centers_per_class: K proxies per class (row c * K + k is center k of class c).
    """

    logit_scale: float = 1.0  # logits = logit_scale * class similarity (the loss's scale or 1 / temperature)

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        centers_per_class: int = 1,
        miner: Union[Miner, str, None] = None,
    ) -> None:
        super().__init__(miner=miner)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        if centers_per_class < 1:
            raise ValueError(f"centers_per_class must be >= 1, got {centers_per_class}")
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.centers_per_class = centers_per_class
        self.proxies = nn.Parameter(torch.empty(num_classes * centers_per_class, embedding_dim))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def pool_centers(self, S: torch.Tensor) -> torch.Tensor:
        """(B, C, K) similarities to every center -> (B, C) similarity to each class."""
        return S.max(dim=2).values

    def class_similarity(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) embeddings -> (B, C) similarities to the classes."""
        S = similarity(embeddings, self.proxies.to(embeddings.dtype), self.similarity_kind)
        if self.centers_per_class == 1:
            return S
        return self.pool_centers(S.view(S.shape[0], self.num_classes, self.centers_per_class))

    @torch.no_grad()
    def predict(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) embeddings -> (B, C) the classifier's logits at inference: scaled similarities, no margin."""
        return self.logit_scale * self.class_similarity(embeddings)

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: Optional[torch.Tensor] = None,
        ref_labels: Optional[torch.Tensor] = None,
        *,
        query_ids: Optional[torch.Tensor] = None,
        reference_ids: Optional[torch.Tensor] = None,
    ) -> LossOutput:
        """Loss of (B, D) embeddings against the (C, D) proxies, plus (R, D) extra references."""
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise ValueError(f"label {int(labels.max())} out of range for num_classes={self.num_classes}")
        S = self.class_similarity(embeddings)
        classes = torch.arange(self.num_classes, device=labels.device)
        relevance = relevance_from_labels(labels, classes)
        if ref_embeddings is not None:
            if ref_labels is None:
                raise ValueError("ref_labels is required when ref_embeddings is given")
            S_ref = similarity(embeddings, ref_embeddings.to(embeddings.dtype), self.similarity_kind)
            rel_ref = relevance_from_labels(labels, ref_labels, query_ids=query_ids, reference_ids=reference_ids)
            S, relevance = torch.cat([S, S_ref], dim=1), torch.cat([relevance, rel_ref], dim=1)
        return self.compute(S, self.mine(S, relevance))

"""Any loss with a cross-batch memory: the batch is scored against itself plus the memory."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import nn

from metricvision.losses.base import LOSSES, LossOutput, MetricLoss
from metricvision.memory import CrossBatchMemory


@LOSSES.register("xbm")
class MemoryLoss(MetricLoss):
    """Wraps a loss so that its references are a cross-batch memory (XBM, Wang et al. 2020).

    Each call first enqueues the batch (detached), then computes
    ``loss(batch, labels, ref_embeddings=memory, ref_labels=memory labels)`` with every
    item's pair with its own copy ignored, like pytorch-metric-learning's CrossBatchMemory.
    Extra references passed to ``forward`` (another modality) are appended to the memory.

    Args:
        loss: a registered loss name or a built loss.
        memory_size: capacity of the memory.
        embedding_dim: D.
        loss_kwargs: keyword arguments for the inner loss when ``loss`` is a name.
        start_after: calls (iterations) without memory before it is used, the XBM warm-up.
    """

    def __init__(
        self,
        loss: Any = "contrastive",
        memory_size: int = 4096,
        embedding_dim: int = 128,
        loss_kwargs: Optional[Dict[str, Any]] = None,
        start_after: int = 0,
    ) -> None:
        super().__init__()
        self.loss: MetricLoss = LOSSES.create(loss, **(loss_kwargs or {})) if isinstance(loss, str) else loss
        self.memory = CrossBatchMemory(memory_size, embedding_dim)
        self.start_after = start_after
        self.calls = 0

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
        """Loss of the (B, D) batch against the memory (which then holds the batch too)."""
        self.calls += 1
        if self.calls <= self.start_after:
            return self.loss(embeddings, labels, ref_embeddings, ref_labels)
        ids = self.memory.enqueue(embeddings, labels)
        mem_emb, mem_labels, mem_ids = self.memory.contents()
        mem_emb = mem_emb.to(embeddings.dtype)
        if ref_embeddings is not None:
            if ref_labels is None:
                raise ValueError("ref_labels is required when ref_embeddings is given")
            mem_emb = torch.cat([mem_emb, ref_embeddings.to(embeddings.dtype)])
            mem_labels = torch.cat([mem_labels, ref_labels.to(mem_labels.dtype)])
            mem_ids = torch.cat([mem_ids, torch.full_like(ref_labels, -2, dtype=mem_ids.dtype)])
        out = self.loss(embeddings, labels, mem_emb, mem_labels, query_ids=ids, reference_ids=mem_ids)
        return LossOutput(out.value, {**out.logs, "memory_items": float(len(self.memory))})

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        return self.loss.compute(S, relevance)

    def own_lr_parameters(self) -> List[nn.Parameter]:
        return self.loss.own_lr_parameters()

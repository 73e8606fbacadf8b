"""Cross-batch memory (XBM, Wang et al., CVPR 2020): a FIFO queue of past embeddings.

The memory holds detached embeddings, their labels and a unique id per enqueued item,
so a loss can use them as references (``ref_embeddings`` / ``ref_labels``) and ignore the
pairs of an item with its own copy (``query_ids`` / ``reference_ids``). Any loss works:
pair losses score the batch against the memory, proxy losses append it to the proxies.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


class CrossBatchMemory(nn.Module):
    """A ring buffer of (embedding, label, id).

    Args:
        size: capacity M.
        dim: embedding dimension D.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.size, self.dim = size, dim
        self.register_buffer("embeddings", torch.zeros(size, dim))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(min(int(self.count), self.size))

    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Add (B, D) embeddings with (B,) labels, overwriting the oldest; returns their (B,) ids."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"embeddings must be (B, {self.dim}), got {tuple(embeddings.shape)}")
        B = embeddings.shape[0]
        if B > self.size:
            raise ValueError(f"batch of {B} does not fit a memory of size {self.size}")
        start = int(self.count)
        ids = torch.arange(start, start + B, device=self.ids.device)
        slots = ids % self.size
        self.embeddings[slots] = embeddings.detach().to(self.embeddings.dtype)
        self.labels[slots] = labels.detach().to(self.labels.device, torch.long)
        self.ids[slots] = ids
        self.count += B
        return ids

    def contents(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, D) embeddings, (N,) labels and (N,) ids currently held, N = len(self)."""
        n = len(self)
        return self.embeddings[:n], self.labels[:n], self.ids[:n]

    def reset(self) -> None:
        """Empty the memory."""
        self.labels.fill_(-1)
        self.ids.fill_(-1)
        self.count.zero_()

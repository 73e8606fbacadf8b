"""Proxy losses: the references are learned proxies, one per class."""
from __future__ import annotations

import torch

from metricvision.losses.base import LOSSES, LossOutput, ProxyLoss
from metricvision.losses.pairs import _soft_plus_logsumexp
from metricvision.similarity import masks


@LOSSES.register("proxy_anchor")
class ProxyAnchorLoss(ProxyLoss):
    """Proxy-Anchor loss (Kim et al., CVPR 2020); proxies are the anchors (columns of S).

    Args:
        num_classes: number of training classes.
        embedding_dim: embedding size.
        alpha: scale (> 0).
        margin: delta.
    """

    def __init__(self, num_classes: int, embedding_dim: int, alpha: float = 32.0, margin: float = 0.1) -> None:
        super().__init__(num_classes, embedding_dim)
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha, self.margin = alpha, margin

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        pos, neg = masks(relevance)
        with_pos = pos.any(dim=0)
        pos_term = _soft_plus_logsumexp(-self.alpha * (S - self.margin), pos, dim=0)
        neg_term = _soft_plus_logsumexp(self.alpha * (S + self.margin), neg, dim=0)
        n_pos = with_pos.sum().clamp_min(1)
        value = pos_term[with_pos].sum() / n_pos + neg_term.sum() / S.shape[1]
        return LossOutput(value, {"proxies_with_positives": float(with_pos.sum())})

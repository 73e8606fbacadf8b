"""Pair losses: the references are the batch itself (or a memory, or another modality)."""
from __future__ import annotations

import torch

from metricvision.losses.base import LOSSES, LossOutput, MetricLoss, zero_loss
from metricvision.similarity import masks


@LOSSES.register("multi_similarity")
class MultiSimilarityLoss(MetricLoss):
    """Multi-similarity loss (Wang et al., CVPR 2019).

    For each row i: 1/alpha log(1 + sum_pos exp(-alpha (S_ip - base)))
    + 1/beta log(1 + sum_neg exp(beta (S_in - base))), averaged over rows.

    Args:
        alpha: positive scale (> 0).
        beta: negative scale (> 0).
        base: similarity offset.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5) -> None:
        super().__init__()
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"alpha and beta must be > 0, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta, self.base = alpha, beta, base

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        pos, neg = masks(relevance)
        if not pos.any() and not neg.any():
            return LossOutput(zero_loss(S))
        pos_term = _soft_plus_logsumexp(-self.alpha * (S - self.base), pos) / self.alpha
        neg_term = _soft_plus_logsumexp(self.beta * (S - self.base), neg) / self.beta
        value = (pos_term + neg_term).mean()
        return LossOutput(value, {"pos_term": float(pos_term.mean()), "neg_term": float(neg_term.mean())})


def _soft_plus_logsumexp(x: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """log(1 + sum_{mask} exp(x)) along ``dim``, stably; 0 where the mask is empty.

    Args:
        x: (Q, R) values.
        mask: (Q, R) bool.

    Returns:
        (Q,) for dim=1 or (R,) for dim=0.
    """
    x = x.masked_fill(~mask, torch.finfo(x.dtype).min)
    zeros_shape = list(x.shape)
    zeros_shape[dim] = 1
    x = torch.cat([x, torch.zeros(zeros_shape, dtype=x.dtype, device=x.device)], dim=dim)
    return torch.logsumexp(x, dim=dim)

"""A simplified tuple contrastive loss of Radenovic et al. (TPAMI 2018, cirtorch) for landmark retrieval."""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F

from metricvision.losses.base import LOSSES, LossOutput, MetricLoss, zero_loss
from metricvision.miners import Miner
from metricvision.similarity import masks


@LOSSES.register("tuple_contrastive")
class TupleContrastiveLoss(MetricLoss):
    """Contrastive loss on (query, positive, hard negatives) tuples drawn from the batch.

    Every row with a positive is a query; its tuple is its positives and its ``negatives``
    most similar negatives. With d = ||q - x|| = sqrt(2 - 2 cos), a positive costs d^2 / 2
    and a negative relu(margin - d)^2 / 2; the loss sums a tuple's terms and averages over
    tuples. Radenovic et al. mine each query's hard negatives from a pool of images with the
    current model (one per landmark); here they are the hardest in the batch (PK batches of
    landmarks, k=2), hence "simplified".

    Args:
        margin: tau (0.85 for ResNet-101 GeM in the paper).
        negatives: hard negatives per tuple (5 in the paper).
    """

    def __init__(self, margin: float = 0.85, negatives: int = 5, miner: Union[Miner, str, None] = None) -> None:
        super().__init__(miner=miner)
        if margin <= 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        if negatives < 1:
            raise ValueError(f"negatives must be >= 1, got {negatives}")
        self.margin, self.negatives = margin, negatives

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        pos, neg = masks(relevance)
        queries = pos.any(dim=1)
        if not queries.any():
            return LossOutput(zero_loss(S))
        d2 = (2 - 2 * S).clamp_min(0.0)
        pos_cost = (d2 / 2).masked_fill(~pos, 0.0).sum(dim=1)
        n = min(self.negatives, S.shape[1])
        top, cols = S.detach().masked_fill(~neg, -torch.inf).topk(n, dim=1)
        hard = torch.isfinite(top)
        d_neg = d2.gather(1, cols).clamp_min(1e-12).sqrt()
        neg_cost = (F.relu(self.margin - d_neg).pow(2) / 2).masked_fill(~hard, 0.0).sum(dim=1)
        per_tuple = (pos_cost + neg_cost)[queries]
        return LossOutput(per_tuple.mean() + zero_loss(S), {"tuples": int(queries.sum())})

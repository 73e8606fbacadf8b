"""HardNet loss (Mishchuk et al., NeurIPS 2017): matching pairs against their hardest in-batch negative."""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from metricvision.losses.base import LOSSES, LossOutput, MetricLoss, zero_loss
from metricvision.miners import Miner
from metricvision.similarity import masks


def anchors_and_positives(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (P,) and (P,) of the first and second sample of every label present at least twice (>= 0)."""
    firsts, seconds, seen = [], [], {}
    for i, y in enumerate(labels.tolist()):
        if y < 0:
            continue
        if y not in seen:
            seen[y] = i
        elif seen[y] >= 0:
            firsts.append(seen[y])
            seconds.append(i)
            seen[y] = -1  # paired; further samples of this label are left out
    device = labels.device
    return torch.tensor(firsts, dtype=torch.long, device=device), torch.tensor(seconds, dtype=torch.long, device=device)


@LOSSES.register("hardnet")
class HardNetLoss(MetricLoss):
    """HardNet's triplet margin loss with the hardest in-batch negative.

    The batch holds pairs of matching patches (the PK sampler with k=2: two patches of each
    3D point). Anchors a_i and positives p_i are compared through the (P, P) matrix of
    distances d = ||a - p|| = sqrt(2 - 2 cos); for the pair i the negative is the closest
    non-matching descriptor of its row (a_i vs p_j) or of its column (a_j vs p_i), and the
    loss is mean_i relu(margin + d(a_i, p_i) - d_neg). With separate references (or more
    than one positive in a row) every positive pair (i, j) is scored against the negatives
    of row i and column j. The reference code's exclusion of negatives closer than 0.008
    (duplicate patches) is left out.

    Args:
        margin: the triplet margin (1.0 in the paper).
    """

    def __init__(self, margin: float = 1.0, miner: Union[Miner, str, None] = None) -> None:
        super().__init__(miner=miner)
        if margin <= 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.margin = margin

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: Optional[torch.Tensor] = None,
        ref_labels: Optional[torch.Tensor] = None,
        **ids: Optional[torch.Tensor],
    ) -> LossOutput:
        """(B, D) batch of matching pairs (or queries against (R, D) references) -> the loss."""
        if ref_embeddings is not None:
            return super().forward(embeddings, labels, ref_embeddings, ref_labels, **ids)
        a, p = anchors_and_positives(labels)
        return super().forward(embeddings[a], labels[a], embeddings[p], labels[p])

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        pos, neg = masks(relevance)
        if not pos.any() or not neg.any():
            return LossOutput(zero_loss(S))
        d = (2 - 2 * S).clamp_min(1e-12).sqrt()
        far = torch.finfo(d.dtype).max
        masked = d.masked_fill(~neg, far)
        row_min, col_min = masked.min(dim=1).values, masked.min(dim=0).values
        hardest = torch.minimum(row_min.unsqueeze(1), col_min.unsqueeze(0))  # (Q, R): for the pair (i, j)
        valid = pos & (hardest < far)
        per_pair = F.relu(self.margin + d - hardest).masked_fill(~valid, 0.0)
        value = per_pair.sum() / valid.sum().clamp_min(1)
        return LossOutput(value + zero_loss(S), {"active_pairs": int((per_pair > 0).sum())})

"""Ranking losses: each row of S is a ranked list of the references for one query.

Rows without a positive are skipped; IGNORED references are not ranked. Tensors stay
O(Q * P * R) at most (P = most positives in a row), computed in chunks of rows.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

from metricvision.losses.base import LOSSES, LossOutput, MetricLoss, zero_loss
from metricvision.miners import Miner, row_positives
from metricvision.similarity import masks

MinerArg = Union[Miner, str, None]
_CHUNK_ELEMENTS = 1 << 24


def _soft_ranks(S: torch.Tensor, relevance: torch.Tensor, temperature: float) -> tuple[torch.Tensor, ...]:
    """Smoothed ranks of every positive, among all ranked references and among the positives.

    rank(p) = 1 + sum_{k != p} sigmoid((S_k - S_p) / temperature).

    Returns:
        all_rank (Q, P), pos_rank (Q, P), valid (Q, P) for the positives of each row.
    """
    pos, _ = masks(relevance)
    ranked = relevance >= 0
    s_p, _, valid = row_positives(S, pos)
    P, R = s_p.shape[1], S.shape[1]
    chunk = max(1, _CHUNK_ELEMENTS // max(P * R, 1))
    all_ranks = []
    for start in range(0, S.shape[0], chunk):
        rows = slice(start, start + chunk)
        sig = torch.sigmoid((S[rows].unsqueeze(1) - s_p[rows].unsqueeze(2)) / temperature)
        all_ranks.append((sig * ranked[rows].unsqueeze(1)).sum(dim=2))
    # the k = p term is sigmoid(0) = 0.5 exactly, with zero gradient: subtract it
    all_rank = 0.5 + torch.cat(all_ranks)
    sig_pp = torch.sigmoid((s_p.unsqueeze(1) - s_p.unsqueeze(2)) / temperature)
    pos_rank = 0.5 + (sig_pp * valid.unsqueeze(1)).sum(dim=2)
    return all_rank, pos_rank, valid


@LOSSES.register("fastap")
class FastAPLoss(MetricLoss):
    """FastAP (Cakir et al., CVPR 2019): AP from soft histograms of distances.

    Distances d = 2 - 2 S (squared Euclidean of unit vectors, in [0, 4]) fall into
    ``num_bins`` + 1 triangular bins; each distance touches its two neighbouring bins
    only, so the histograms cost O(Q * R). Loss: mean over rows of 1 - FastAP.
    """

    def __init__(self, num_bins: int = 10, miner: MinerArg = None) -> None:
        super().__init__(miner=miner)
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        self.num_bins = int(num_bins)

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        pos, neg = masks(relevance)
        n_pos = pos.sum(dim=1)
        rows = n_pos > 0
        if not rows.any():
            return LossOutput(zero_loss(S))
        position = ((2.0 - 2.0 * S) * (self.num_bins / 4.0)).clamp(0.0, float(self.num_bins))
        low = position.detach().floor().clamp(max=self.num_bins - 1)
        upper_weight = position - low
        low = low.long()
        hist_pos = self._histogram(low, upper_weight, pos)
        hist_all = hist_pos + self._histogram(low, upper_weight, neg)
        cum_pos, cum_all = hist_pos.cumsum(dim=1), hist_all.cumsum(dim=1)
        product = hist_pos * cum_pos
        safe = (product > 0) & (cum_all > 0)
        ap = torch.where(safe, product / cum_all.masked_fill(~safe, 1.0), 0.0).sum(dim=1)
        ap = ap[rows] / n_pos[rows]
        return LossOutput((1.0 - ap).mean(), {"fastap": ap.detach().mean().item()})

    def _histogram(self, low: torch.Tensor, upper_weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(Q, num_bins + 1) triangular-kernel histogram of the masked entries of each row."""
        mask = mask.to(upper_weight.dtype)
        upper_weight = upper_weight * mask
        lower_weight = mask - upper_weight
        hist = torch.zeros(low.shape[0], self.num_bins + 1, dtype=upper_weight.dtype, device=low.device)
        return hist.scatter_add(1, low, lower_weight).scatter_add(1, low + 1, upper_weight)


@LOSSES.register("smooth_ap")
class SmoothAPLoss(MetricLoss):
    """Smooth-AP (Brown et al., ECCV 2020): AP with sigmoid-smoothed ranks.

    AP_q = 1/|P| sum_p rank_P(p) / rank_all(p), ranks smoothed with
    sigmoid(x / temperature); loss: mean over rows of 1 - AP_q.
    """

    def __init__(self, temperature: float = 0.01, miner: MinerArg = None) -> None:
        super().__init__(miner=miner)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        all_rank, pos_rank, valid = _soft_ranks(S, relevance, self.temperature)
        rows = valid.any(dim=1)
        if not rows.any():
            return LossOutput(zero_loss(S))
        ap = ((pos_rank / all_rank) * valid).sum(dim=1)[rows] / valid.sum(dim=1)[rows]
        return LossOutput((1.0 - ap).mean(), {"smooth_ap": ap.detach().mean().item()})


@LOSSES.register("recall_at_k")
class RecallAtKLoss(MetricLoss):
    """Recall@k surrogate (Patel et al., CVPR 2022).

    recall@k_q = sum_p sigmoid((k - rank(p)) / temperature_k) / min(k, |P|), rank(p)
    smoothed with temperature_rank; loss: mean over rows and ks of 1 - recall@k_q.
    """

    def __init__(
        self,
        ks: Sequence[int] = (1, 2, 4, 8, 16),
        temperature_rank: float = 0.01,
        temperature_k: float = 1.0,
        miner: MinerArg = None,
    ) -> None:
        super().__init__(miner=miner)
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be non-empty positive integers, got {ks}")
        if temperature_rank <= 0 or temperature_k <= 0:
            raise ValueError(f"temperatures must be > 0, got {temperature_rank} and {temperature_k}")
        self.ks = tuple(int(k) for k in ks)
        self.temperature_rank, self.temperature_k = temperature_rank, temperature_k

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        all_rank, _, valid = _soft_ranks(S, relevance, self.temperature_rank)
        rows = valid.any(dim=1)
        if not rows.any():
            return LossOutput(zero_loss(S))
        all_rank, valid = all_rank[rows], valid[rows]
        n_pos = valid.sum(dim=1)
        ks = torch.tensor(self.ks, dtype=S.dtype, device=S.device)
        hits = torch.sigmoid((ks.view(-1, 1, 1) - all_rank.unsqueeze(0)) / self.temperature_k) * valid
        recall = hits.sum(dim=2) / torch.minimum(ks.view(-1, 1), n_pos.unsqueeze(0).to(S.dtype))
        return LossOutput((1.0 - recall).mean(), {f"soft_recall@{k}": r.item() for k, r in zip(self.ks, recall.detach().mean(1))})

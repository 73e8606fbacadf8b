"""Miners: choose which pairs (and triplets) of a similarity matrix a loss sees.

A miner maps ``(S (Q, R), relevance (Q, R))`` to a new relevance in which every pair it
does not keep is IGNORED; it never lists triplets, so memory stays O(Q * R) (triplet
conditions are evaluated on a (Q, P, R) view, P = most positives in a row). Triplet
losses also call ``triplet_mask`` to keep only the (anchor, positive, negative) triplets
the miner chose. Build one with ``create_miner(name, **kwargs)`` and pass it to a loss:
``create_loss("triplet", margin=0.1, miner=create_miner("semihard", margin=0.1))``, or
just the name: ``create_loss("contrastive", miner="multi_similarity")``.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from metricvision._registry import Registry
from metricvision.similarity import IGNORED, IRRELEVANT, RELEVANT, masks

MINERS: Registry["Miner"] = Registry("miner")


def row_positives(S: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positives of every row, left-aligned and padded.

    Args:
        S: (Q, R) similarities.
        pos: (Q, R) bool positive mask.

    Returns:
        values (Q, P), column indices (Q, P) and a validity mask (Q, P), P = max positives in a row
        (at least 1).
    """
    P = max(int(pos.sum(dim=1).max()) if pos.numel() else 0, 1)
    idx = torch.argsort(pos.to(torch.uint8), dim=1, descending=True, stable=True)[:, :P]
    return S.gather(1, idx), idx, pos.gather(1, idx)


def relevance_from_masks(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """(Q, R) int8 relevance: ``pos`` -> RELEVANT, ``neg`` -> IRRELEVANT, rest IGNORED."""
    rel = torch.full(pos.shape, IGNORED, dtype=torch.int8, device=pos.device)
    return rel.masked_fill(neg, IRRELEVANT).masked_fill(pos, RELEVANT)


class Miner:
    """Base class: ``__call__(S, relevance) -> relevance`` with unmined pairs IGNORED."""

    def __call__(self, S: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def triplet_mask(self, s_ap: torch.Tensor, s_an: torch.Tensor) -> Optional[torch.Tensor]:
        """Which triplets to keep from (Q, P, 1) positive and (Q, 1, R) negative similarities.

        Returns a (Q, P, R) bool mask, or None to keep every triplet of the mined pairs.
        """
        return None


@MINERS.register("batch_hard")
class BatchHardMiner(Miner):
    """Batch-hard (Hermans et al. 2017): per row the least similar positive and the most
    similar negative; rows lacking either are dropped."""

    def __call__(self, S: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        pos, neg = masks(relevance)
        rows = (pos.any(dim=1) & neg.any(dim=1)).nonzero().squeeze(1)
        hard_pos = S.masked_fill(~pos, math.inf).argmin(dim=1)[rows]
        hard_neg = S.masked_fill(~neg, -math.inf).argmax(dim=1)[rows]
        keep_pos = torch.zeros_like(pos)
        keep_neg = torch.zeros_like(neg)
        keep_pos[rows, hard_pos] = True
        keep_neg[rows, hard_neg] = True
        return relevance_from_masks(keep_pos, keep_neg)


class _TripletConditionMiner(Miner):
    """Keeps the pairs that take part in at least one triplet passing ``triplet_mask``."""

    def __call__(self, S: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        pos, neg = masks(relevance)
        s_ap, idx, valid = row_positives(S, pos)
        kept = self.triplet_mask(s_ap.unsqueeze(2), S.unsqueeze(1))
        kept = kept & valid.unsqueeze(2) & neg.unsqueeze(1)
        keep_neg = kept.any(dim=1)
        keep_pos = torch.zeros(pos.shape, dtype=torch.int32, device=S.device)
        keep_pos.scatter_add_(1, idx, kept.any(dim=2).to(torch.int32))
        return relevance_from_masks(keep_pos > 0, keep_neg)


@MINERS.register("triplet_margin")
class TripletMarginMiner(_TripletConditionMiner):
    """Triplets whose margin s_ap - s_an is at most ``margin``.

    Args:
        margin: the triplet margin (>= 0).
        kind: "all" (every violating triplet), "hard" (s_an >= s_ap) or "semihard"
            (FaceNet: 0 < s_ap - s_an <= margin).
    """

    KINDS = ("all", "hard", "semihard")

    def __init__(self, margin: float = 0.2, kind: str = "all") -> None:
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got '{kind}'")
        self.margin, self.kind = margin, kind

    def triplet_mask(self, s_ap: torch.Tensor, s_an: torch.Tensor) -> torch.Tensor:
        gap = s_ap - s_an
        keep = gap <= self.margin
        if self.kind == "hard":
            keep = keep & (gap <= 0)
        elif self.kind == "semihard":
            keep = keep & (gap > 0)
        return keep


@MINERS.register("semihard")
def semihard_miner(margin: float = 0.2) -> TripletMarginMiner:
    """FaceNet semi-hard negatives (Schroff et al. 2015): 0 < s_ap - s_an <= margin."""
    return TripletMarginMiner(margin=margin, kind="semihard")


@MINERS.register("multi_similarity")
class MultiSimilarityMiner(Miner):
    """Multi-similarity pair mining (Wang et al. 2019): keep negatives with
    s_an + epsilon > min positive and positives with s_ap - epsilon < max negative.

    Args:
        epsilon: the mining margin (>= 0).
    """

    def __init__(self, epsilon: float = 0.1) -> None:
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        self.epsilon = epsilon

    def __call__(self, S: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        pos, neg = masks(relevance)
        min_pos = S.masked_fill(~pos, math.inf).min(dim=1, keepdim=True).values
        max_neg = S.masked_fill(~neg, -math.inf).max(dim=1, keepdim=True).values
        return relevance_from_masks(pos & (S - self.epsilon < max_neg), neg & (S + self.epsilon > min_pos))


@MINERS.register("hardest_row_col")
class HardestRowColumnMiner(Miner):
    """HardNet (Mishchuk et al. 2017): every positive, and for each row and each column its
    most similar negative (the hardest in the row of the anchor or the column of the positive)."""

    def __call__(self, S: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        pos, neg = masks(relevance)
        masked = S.masked_fill(~neg, -math.inf)
        keep_neg = torch.zeros_like(neg)
        rows = neg.any(dim=1).nonzero().squeeze(1)
        cols = neg.any(dim=0).nonzero().squeeze(1)
        keep_neg[rows, masked.argmax(dim=1)[rows]] = True
        keep_neg[masked.argmax(dim=0)[cols], cols] = True
        return relevance_from_masks(pos, keep_neg)


@MINERS.register("tuple")
class TupleMiner(Miner):
    """The pairs of tuples laid out consecutively in the batch: (anchor, positive, negative), ...

    Rows (and columns) t * size ... t * size + size - 1 hold tuple t, its anchor first. Only the
    pairs of each anchor with the other items of its own tuple are kept, in both directions, as in
    the tuple losses of Radenovic et al. (2018) and Iscen et al. (2018), where a tuple is never
    compared with the other tuples of the batch.

    Args:
        size: items per tuple (3: anchor, positive, negative).
    """

    def __init__(self, size: int = 3) -> None:
        if size < 2:
            raise ValueError(f"size must be >= 2, got {size}")
        self.size = size

    def __call__(self, S: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        q = torch.arange(relevance.shape[0], device=relevance.device)[:, None]
        r = torch.arange(relevance.shape[1], device=relevance.device)[None, :]
        keep = (q // self.size == r // self.size) & ((q % self.size == 0) | (r % self.size == 0))
        return relevance.masked_fill(~keep, IGNORED)


@MINERS.register("distance_weighted")
class DistanceWeightedMiner(Miner):
    """Distance-weighted sampling (Wu et al. 2017) on unit vectors, d = sqrt(2 - 2 S).

    Every positive is kept; for each positive of a row one negative is drawn with
    probability proportional to 1 / q(d), q(d) ~ d^(n-2) (1 - d^2/4)^((n-3)/2), d clipped
    below at ``cutoff`` and zero at or above ``nonzero_loss_cutoff``.

    Args:
        dim: embedding dimension n.
        cutoff: lower clip of the distance.
        nonzero_loss_cutoff: distances at or above it are never drawn.
        generator: optional torch.Generator for reproducible draws.
    """

    def __init__(
        self,
        dim: int = 128,
        cutoff: float = 0.5,
        nonzero_loss_cutoff: float = 1.4,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        if dim < 4:
            raise ValueError(f"dim must be >= 4, got {dim}")
        if not 0 < cutoff < nonzero_loss_cutoff <= 2:
            raise ValueError(
                f"need 0 < cutoff < nonzero_loss_cutoff <= 2, got {cutoff} and {nonzero_loss_cutoff}"
            )
        self.dim, self.cutoff, self.nonzero_loss_cutoff = dim, cutoff, nonzero_loss_cutoff
        self.generator = generator

    def probabilities(self, S: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        """(Q, R) probability of drawing each negative; rows without a candidate are zero."""
        _, neg = masks(relevance)
        d = (2.0 - 2.0 * S.double()).clamp_min(0.0).sqrt().clamp_min(self.cutoff)
        n = float(self.dim)
        log_w = (2.0 - n) * d.log() - (n - 3.0) / 2.0 * (1.0 - 0.25 * d * d).clamp_min(1e-12).log()
        keep = neg & (d < self.nonzero_loss_cutoff)
        log_w = log_w.masked_fill(~keep, -math.inf)
        top = log_w.max(dim=1, keepdim=True).values
        w = (log_w - torch.where(top.isfinite(), top, 0.0)).exp()
        total = w.sum(dim=1, keepdim=True)
        return (w / total.clamp_min(1e-300)).to(S.dtype)

    def __call__(self, S: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        pos, _ = masks(relevance)
        prob = self.probabilities(S, relevance)
        rows = (pos.any(dim=1) & (prob.sum(dim=1) > 0)).nonzero().squeeze(1)
        keep_neg = torch.zeros_like(pos)
        if len(rows):
            draws = int(pos.sum(dim=1).max())
            picked = torch.multinomial(prob[rows].float(), draws, replacement=True, generator=self.generator)
            n_pos = pos[rows].sum(dim=1, keepdim=True)
            used = torch.arange(draws, device=S.device).unsqueeze(0) < n_pos
            keep_neg[rows.unsqueeze(1).expand_as(picked)[used], picked[used]] = True
        keep_pos = pos & keep_neg.any(dim=1, keepdim=True)
        return relevance_from_masks(keep_pos, keep_neg)


def create_miner(name: str, **kwargs: Any) -> Miner:
    """Build the miner registered as ``name``."""
    return MINERS.create(name, **kwargs)

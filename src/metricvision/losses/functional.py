"""Small tensor helpers shared by the losses (masked log-sum-exp, reductions, triplet views)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from metricvision.miners import Miner, row_positives


def masked_logsumexp(x: torch.Tensor, mask: torch.Tensor, dim: int = 1, add_one: bool = False) -> torch.Tensor:
    """log(sum_{mask} exp(x)) along ``dim`` (log(1 + ...) with ``add_one``); 0 where the mask is empty.

    Args:
        x: (Q, R) values.
        mask: (Q, R) bool.

    Returns:
        (Q,) for dim=1, (R,) for dim=0.
    """
    x = x.masked_fill(~mask, torch.finfo(x.dtype).min)
    top = x.max(dim=dim, keepdim=True).values.detach()
    if add_one:
        top = top.clamp_min(0.0)
    total = (x - top).exp().sum(dim=dim, keepdim=True)
    if add_one:
        total = total + (-top).exp()
    out = (top + total.log()).squeeze(dim)
    return out if add_one else out.masked_fill(~mask.any(dim=dim), 0.0)


def avg_nonzero(losses: torch.Tensor) -> torch.Tensor:
    """Mean over the strictly positive entries (0 with a gradient when there are none)."""
    return losses.sum() / (losses > 0).sum().clamp_min(1)


def softmax_cross_entropy(logits: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """Per-row -log(sum_pos softmax) over the non-ignored columns, averaged over rows with a positive.

    With one positive per row this is the usual cross-entropy.

    Args:
        logits: (Q, R).
        relevance: (Q, R) int8 relevance.
    """
    pos = relevance == 1
    valid = relevance >= 0
    if bool(valid.all()) and bool((pos.sum(dim=1) == 1).all()):
        return F.cross_entropy(logits, pos.to(torch.uint8).argmax(dim=1))  # single-label fast path
    rows = pos.any(dim=1)
    per_row = masked_logsumexp(logits, valid) - masked_logsumexp(logits, pos)
    return (per_row * rows).sum() / rows.sum().clamp_min(1)


def triplets(
    S: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, miner: Optional[Miner]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (anchor, positive, negative) triplets of S, as a (Q, P, R) view, never a list.

    Args:
        S: (Q, R) similarities.
        pos, neg: (Q, R) bool masks.
        miner: asked for ``triplet_mask`` on detached similarities when given.

    Returns:
        s_ap (Q, P) positive similarities, their column indices (Q, P), valid (Q, P) and
        keep (Q, P, R) bool: which triplets exist (and were mined).
    """
    s_ap, idx, valid = row_positives(S, pos)
    keep = valid.unsqueeze(2) & neg.unsqueeze(1)
    if miner is not None:
        chosen = miner.triplet_mask(s_ap.detach().unsqueeze(2), S.detach().unsqueeze(1))
        if chosen is not None:
            keep = keep & chosen
    return s_ap, idx, valid, keep

"""Pair losses: the references are the batch itself, a memory, or another modality.

Every loss here reads only S (Q, R) and the relevance, so queries and references may be
different sets (``ref_embeddings``), and every loss accepts ``miner=``.
"""
from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from metricvision.losses.base import LOSSES, LossOutput, MetricLoss, zero_loss
from metricvision.losses.functional import avg_nonzero, masked_logsumexp, triplets
from metricvision.miners import Miner
from metricvision.similarity import masks

MinerArg = Union[Miner, str, None]


@LOSSES.register("contrastive")
class ContrastiveLoss(MetricLoss):
    """Contrastive loss (Hadsell et al. 2006) on similarities.

    relu(pos_margin - S) over positive pairs plus relu(S - neg_margin) over negative
    pairs, each averaged over its non-zero terms.
    """

    def __init__(self, pos_margin: float = 1.0, neg_margin: float = 0.5, miner: MinerArg = None) -> None:
        super().__init__(miner=miner)
        self.pos_margin, self.neg_margin = pos_margin, neg_margin

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        pos, neg = masks(relevance)
        pos_loss = F.relu(self.pos_margin - S).masked_fill(~pos, 0.0)
        neg_loss = F.relu(S - self.neg_margin).masked_fill(~neg, 0.0)
        value = avg_nonzero(pos_loss) + avg_nonzero(neg_loss)
        return LossOutput(value, {"active_pos": int((pos_loss > 0).sum()), "active_neg": int((neg_loss > 0).sum())})


@LOSSES.register("triplet")
class TripletLoss(MetricLoss):
    """Triplet loss with margin (Weinberger & Saul 2009; Schroff et al. 2015) on similarities.

    relu(S_an - S_ap + margin) (softplus with ``smooth``) over every triplet of a row,
    averaged over the non-zero terms. Triplets live in a (Q, P, R) view (P = most
    positives in a row), never in an index list.
    """

    def __init__(self, margin: float = 0.1, smooth: bool = False, miner: MinerArg = None) -> None:
        super().__init__(miner=miner)
        self.margin, self.smooth = margin, smooth

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        pos, neg = masks(relevance)
        s_ap, _, _, keep = triplets(S, pos, neg, self.miner)
        violation = S.unsqueeze(1) - s_ap.unsqueeze(2) + self.margin
        loss = F.softplus(violation) if self.smooth else F.relu(violation)
        loss = loss.masked_fill(~keep, 0.0)
        return LossOutput(avg_nonzero(loss), {"active_triplets": int((loss > 0).sum())})


@LOSSES.register("lifted_structure")
class LiftedStructureLoss(MetricLoss):
    """Lifted structured loss (Song et al., CVPR 2016) on similarities.

    For each positive pair (i, j): J = log(sum_{neg of row i} e^(S - neg_margin)
    + sum_{neg of reference j} e^(S - neg_margin)) + pos_margin - S_ij; the loss is
    mean over positive pairs of relu(J)^2 / 2. The negatives of reference j are read
    from column j, so queries and references may differ; cost O(Q * R).
    """

    def __init__(self, neg_margin: float = 1.0, pos_margin: float = 0.0, miner: MinerArg = None) -> None:
        super().__init__(miner=miner)
        self.neg_margin, self.pos_margin = neg_margin, pos_margin

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        pos, neg = masks(relevance)
        if not pos.any() or not neg.any():
            return LossOutput(zero_loss(S))
        x = S - self.neg_margin
        row, col = masked_logsumexp(x, neg, dim=1), masked_logsumexp(x, neg, dim=0)
        has_row, has_col = neg.any(dim=1).unsqueeze(1), neg.any(dim=0).unsqueeze(0)
        row, col = row.unsqueeze(1), col.unsqueeze(0)
        both = torch.logaddexp(row, col)
        union = torch.where(has_row & has_col, both, torch.where(has_row, row, col) * (has_row | has_col))
        per_pair = F.relu(union + self.pos_margin - S).pow(2) / 2
        return LossOutput(per_pair.masked_fill(~pos, 0.0).sum() / pos.sum())


@LOSSES.register("ntxent")
class NTXentLoss(MetricLoss):
    """N-pair / InfoNCE / NT-Xent (Sohn 2016; van den Oord et al. 2018; Chen et al. 2020).

    For each positive pair (a, p): -log(e^(S_ap/t) / (e^(S_ap/t) + sum_{neg of a} e^(S_an/t))),
    averaged over positive pairs. With ``symmetric`` (CLIP, Radford et al. 2021) the same
    is computed over the columns (references -> queries) and the two are averaged. With
    ``learn_temperature`` 1/t is a parameter (stored as its log, capped at 100).

    Args:
        temperature: t > 0.
        similarity: "cosine" or "dot" (N-pair uses dot products, t = 1).
    """

    def __init__(
        self,
        temperature: float = 0.07,
        symmetric: bool = False,
        learn_temperature: bool = False,
        similarity: str = "cosine",
        miner: MinerArg = None,
    ) -> None:
        super().__init__(miner=miner)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.similarity_kind = similarity
        self.symmetric = symmetric
        self.temperature = temperature
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature))) if learn_temperature else None

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        pos, neg = masks(relevance)
        n_pos = pos.sum()
        scale = self._scale(S)
        if not n_pos or not neg.any():
            return LossOutput(zero_loss(S) + zero_loss(scale))
        L = S * scale
        value = self._directional(L, pos, neg, dim=1) / n_pos
        if self.symmetric:
            value = (value + self._directional(L, pos, neg, dim=0) / n_pos) / 2
        return LossOutput(value, {"scale": float(scale.detach())})

    def _scale(self, S: torch.Tensor) -> torch.Tensor:
        """1 / t in S's dtype: the learned one (capped at 100), or the fixed one computed from t
        in double precision (a float32 copy of t would be off by ~3e-8 relative even in float64)."""
        if self.log_scale is not None:
            return self.log_scale.exp().to(S.dtype).clamp(max=100.0)
        return torch.tensor(1.0 / self.temperature, dtype=S.dtype, device=S.device)

    @staticmethod
    def _directional(L: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, dim: int) -> torch.Tensor:
        neg_lse = L.masked_fill(~neg, torch.finfo(L.dtype).min).logsumexp(dim=dim, keepdim=True)
        return F.softplus(neg_lse - L).masked_fill(~pos, 0.0).sum()


@LOSSES.register("infonce")
def infonce(temperature: float = 0.07, miner: MinerArg = None) -> NTXentLoss:
    """InfoNCE over the rows of S: queries (images) against references (the batch, or texts)."""
    return NTXentLoss(temperature=temperature, miner=miner)


@LOSSES.register("clip")
def clip(temperature: float = 0.07, learn_temperature: bool = True) -> NTXentLoss:
    """Image-text contrastive (CLIP): symmetric InfoNCE with a learned temperature.

    Call it as ``loss(image_emb, ids, ref_embeddings=text_emb, ref_labels=ids)``.
    """
    return NTXentLoss(temperature=temperature, symmetric=True, learn_temperature=learn_temperature)


@LOSSES.register("npair")
def npair(miner: MinerArg = None) -> NTXentLoss:
    """N-pair loss (Sohn, NeurIPS 2016): softmax over dot products, temperature 1."""
    return NTXentLoss(temperature=1.0, similarity="dot", miner=miner)


@LOSSES.register("supcon")
class SupConLoss(MetricLoss):
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020), the "L_out" form.

    Per row: -mean_{pos p} log(e^(S_ap/t) / sum_{pos and neg k} e^(S_ak/t)), averaged over
    rows with a non-zero loss.
    """

    def __init__(self, temperature: float = 0.1, miner: MinerArg = None) -> None:
        super().__init__(miner=miner)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        pos, neg = masks(relevance)
        if not pos.any() or not neg.any():
            return LossOutput(zero_loss(S))
        L = S / self.temperature
        log_prob = L - masked_logsumexp(L, pos | neg).unsqueeze(1)
        per_row = -log_prob.masked_fill(~pos, 0.0).sum(dim=1) / pos.sum(dim=1).clamp_min(1)
        return LossOutput(avg_nonzero(per_row))


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

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, miner: MinerArg = None) -> None:
        super().__init__(miner=miner)
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"alpha and beta must be > 0, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta, self.base = alpha, beta, base

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        pos, neg = masks(relevance)
        if not pos.any() and not neg.any():
            return LossOutput(zero_loss(S))
        pos_term = masked_logsumexp(-self.alpha * (S - self.base), pos, add_one=True) / self.alpha
        neg_term = masked_logsumexp(self.beta * (S - self.base), neg, add_one=True) / self.beta
        value = (pos_term + neg_term).mean()
        return LossOutput(value, {"pos_term": pos_term.detach().mean().item(), "neg_term": neg_term.detach().mean().item()})


@LOSSES.register("circle")
class CircleLoss(MetricLoss):
    """Circle loss (Sun et al., CVPR 2020), pair-wise labels.

    Per row: softplus(logsumexp_pos(-gamma a_p (S - (1 - m))) + logsumexp_neg(gamma a_n (S - m)))
    with a_p = relu(1 + m - S), a_n = relu(S + m) (not back-propagated); rows lacking a
    positive or a negative count zero; averaged over the non-zero rows.
    """

    def __init__(self, m: float = 0.4, gamma: float = 80.0, miner: MinerArg = None) -> None:
        super().__init__(miner=miner)
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.m, self.gamma = m, gamma

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        pos, neg = masks(relevance)
        if not pos.any() or not neg.any():
            return LossOutput(zero_loss(S))
        Sd = S.detach()
        logit_p = -self.gamma * F.relu(1 + self.m - Sd) * (S - (1 - self.m))
        logit_n = self.gamma * F.relu(Sd + self.m) * (S - self.m)
        per_row = F.softplus(masked_logsumexp(logit_p, pos) + masked_logsumexp(logit_n, neg))
        per_row = per_row * (pos.any(dim=1) & neg.any(dim=1))
        return LossOutput(avg_nonzero(per_row))


@LOSSES.register("margin")
class MarginLoss(MetricLoss):
    """Margin loss (Wu et al., ICCV 2017) on distances d = sqrt(2 - 2 S) of unit vectors.

    relu(d_ap - beta + margin) + relu(beta - d_an + margin) summed over the triplets of
    each row (so a pair counts once per triplet it is in), divided by the number of
    non-zero terms, plus nu * beta when beta is learned. Built from pair counts: O(Q * R).

    Args:
        margin: alpha, the margin around the boundary beta.
        beta: initial boundary.
        nu: regularisation of a learned beta.
        learn_beta: make beta a parameter (see ``own_lr_parameters``).
    """

    def __init__(
        self, margin: float = 0.2, beta: float = 1.2, nu: float = 0.0, learn_beta: bool = False, miner: MinerArg = None
    ) -> None:
        super().__init__(miner=miner)
        self.margin, self.nu = margin, nu
        beta_t = torch.tensor(float(beta))
        if learn_beta:
            self.beta = nn.Parameter(beta_t)
        else:
            self.register_buffer("beta", beta_t)

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        pos, neg = masks(relevance)
        beta = self.beta.to(S.dtype)
        s_ap, _, valid, keep = triplets(S, pos, neg, self.miner)
        per_pos = keep.sum(dim=2).to(S.dtype)
        per_neg = keep.sum(dim=1).to(S.dtype)
        d_ap = (2 - 2 * s_ap).clamp_min(1e-12).sqrt()
        d = (2 - 2 * S).clamp_min(1e-12).sqrt()
        pos_loss = F.relu(d_ap - beta + self.margin) * per_pos
        neg_loss = F.relu(beta - d + self.margin) * per_neg
        divisor = (per_pos * (pos_loss > 0)).sum() + (per_neg * (neg_loss > 0)).sum()
        value = (pos_loss.sum() + neg_loss.sum()) / divisor.clamp_min(1)
        if isinstance(self.beta, nn.Parameter):
            value = value + self.nu * beta * bool(keep.any())
        return LossOutput(value + zero_loss(S), {"beta": beta.item()})

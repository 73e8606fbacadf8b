"""Proxy losses: the references are learned proxies, one or more per class."""
from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from metricvision.losses.base import LOSSES, LossOutput, ProxyLoss
from metricvision.losses.functional import masked_logsumexp, softmax_cross_entropy
from metricvision.miners import Miner
from metricvision.similarity import masks

MinerArg = Union[Miner, str, None]


@LOSSES.register("proxy_anchor")
class ProxyAnchorLoss(ProxyLoss):
    """Proxy-Anchor loss (Kim et al., CVPR 2020); proxies are the anchors (columns of S).

    Args:
        num_classes: number of training classes.
        embedding_dim: embedding size.
        alpha: scale (> 0).
        margin: delta.
    """

    def __init__(
        self, num_classes: int, embedding_dim: int, alpha: float = 32.0, margin: float = 0.1, miner: MinerArg = None
    ) -> None:
        super().__init__(num_classes, embedding_dim, miner=miner)
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha, self.margin = alpha, margin

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        pos, neg = masks(relevance)
        with_pos = pos.any(dim=0)
        pos_term = masked_logsumexp(-self.alpha * (S - self.margin), pos, dim=0, add_one=True)
        neg_term = masked_logsumexp(self.alpha * (S + self.margin), neg, dim=0, add_one=True)
        n_pos = with_pos.sum().clamp_min(1)
        value = pos_term.sum() / n_pos + neg_term.sum() / S.shape[1]
        return LossOutput(value, {"proxies_with_positives": float(with_pos.sum())})


@LOSSES.register("proxy_nca")
class ProxyNCALoss(ProxyLoss):
    """Proxy-NCA (Movshovitz-Attias et al., ICCV 2017) as a softmax over proxies.

    Logits are -softmax_scale * ||x - p||^2 of unit vectors (= softmax_scale * (2 S - 2));
    loss is -log of the probability of the own class, averaged over rows.

    Args:
        softmax_scale: 1 / temperature (Proxy-NCA++ uses 9, i.e. temperature 1/9).
    """

    def __init__(
        self, num_classes: int, embedding_dim: int, softmax_scale: float = 1.0, miner: MinerArg = None
    ) -> None:
        super().__init__(num_classes, embedding_dim, miner=miner)
        if softmax_scale <= 0:
            raise ValueError(f"softmax_scale must be > 0, got {softmax_scale}")
        self.softmax_scale = softmax_scale

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        return LossOutput(softmax_cross_entropy(self.softmax_scale * (2.0 * S - 2.0), relevance))


@LOSSES.register("proxy_nca_pp")
def proxy_nca_pp(
    num_classes: int, embedding_dim: int, temperature: float = 1.0 / 9.0, miner: MinerArg = None
) -> ProxyNCALoss:
    """Proxy-NCA++ (Teh et al., ECCV 2020): Proxy-NCA with a low softmax temperature."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return ProxyNCALoss(num_classes, embedding_dim, softmax_scale=1.0 / temperature, miner=miner)


@LOSSES.register("soft_triple")
class SoftTripleLoss(ProxyLoss):
    """SoftTriple loss (Qian et al., ICCV 2019): K centers per class pooled by a softmax.

    Similarity to class c: sum_k softmax_k(S_ck / gamma) S_ck; loss: cross-entropy over
    la * (S_c - margin on the target), plus tau * the center-spread regulariser.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        centers_per_class: int = 10,
        la: float = 20.0,
        gamma: float = 0.1,
        margin: float = 0.01,
        tau: float = 0.0,
        miner: MinerArg = None,
    ) -> None:
        super().__init__(num_classes, embedding_dim, centers_per_class=centers_per_class, miner=miner)
        if gamma <= 0 or la <= 0:
            raise ValueError(f"gamma and la must be > 0, got gamma={gamma}, la={la}")
        self.la, self.gamma, self.margin, self.tau = la, gamma, margin, tau
        nn.init.kaiming_uniform_(self.proxies, a=math.sqrt(5))

    def pool_centers(self, S: torch.Tensor) -> torch.Tensor:
        return (F.softmax(S / self.gamma, dim=2) * S).sum(dim=2)

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        value = softmax_cross_entropy(self.la * (S - self.margin * (relevance == 1).to(S.dtype)), relevance)
        if self.tau > 0 and self.centers_per_class > 1:
            value = value + self.tau * self._spread()
        return LossOutput(value)

    def _spread(self) -> torch.Tensor:
        """Mean sqrt(2 - 2 cos) between the centers of each class (the paper's regulariser)."""
        K = self.centers_per_class
        w = F.normalize(self.proxies, dim=1).view(self.num_classes, K, -1)
        cos = w @ w.transpose(1, 2)
        upper = torch.triu(torch.ones(K, K, dtype=torch.bool, device=w.device), diagonal=1)
        return (2.0 + 1e-10 - 2.0 * cos[:, upper]).sqrt().sum() / (self.num_classes * K * (K - 1))

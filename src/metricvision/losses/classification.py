"""Classification losses: the references are learned class weights (one or more per class).

Each is softmax cross-entropy over logits derived from S (B, C) = similarity to the class
weights; they differ in the similarity and in the margin applied to the target column.
"""
from __future__ import annotations

import math
from typing import Union

import torch

from metricvision.losses.base import LOSSES, LossOutput, ProxyLoss
from metricvision.losses.functional import softmax_cross_entropy
from metricvision.miners import Miner

MinerArg = Union[Miner, str, None]


@LOSSES.register("softmax")
class SoftmaxLoss(ProxyLoss):
    """Softmax cross-entropy over dot products with the class weights (no bias)."""

    similarity_kind = "dot"

    def __init__(self, num_classes: int, embedding_dim: int, miner: MinerArg = None) -> None:
        super().__init__(num_classes, embedding_dim, miner=miner)

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        return LossOutput(softmax_cross_entropy(S, relevance))


@LOSSES.register("normalized_softmax")
class NormalizedSoftmaxLoss(ProxyLoss):
    """Normalized softmax (Zhai & Wu 2019): cross-entropy over cosine / temperature."""

    def __init__(self, num_classes: int, embedding_dim: int, temperature: float = 0.05, miner: MinerArg = None) -> None:
        super().__init__(num_classes, embedding_dim, miner=miner)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.logit_scale = 1.0 / temperature

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        return LossOutput(softmax_cross_entropy(S / self.temperature, relevance))


@LOSSES.register("cosface")
class CosFaceLoss(ProxyLoss):
    """CosFace / large-margin cosine loss (Wang et al., CVPR 2018): scale * (cos - margin on target)."""

    def __init__(
        self, num_classes: int, embedding_dim: int, margin: float = 0.35, scale: float = 64.0, miner: MinerArg = None
    ) -> None:
        super().__init__(num_classes, embedding_dim, miner=miner)
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.margin, self.scale = margin, scale
        self.logit_scale = scale

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        logits = self.scale * (S - self.margin * (relevance == 1).to(S.dtype))
        return LossOutput(softmax_cross_entropy(logits, relevance))


@LOSSES.register("arcface")
class ArcFaceLoss(ProxyLoss):
    """ArcFace / additive angular margin (Deng et al., CVPR 2019).

    The target logit is scale * cos(theta + margin) while theta <= pi - margin, and
    scale * (cos(theta) - margin * sin(margin)) beyond (keeps it decreasing in theta).

    Args:
        margin: angular margin in radians, in [0, pi/2).
        scale: logit scale s.
        centers_per_class: K > 1 gives sub-center ArcFace (Deng et al., ECCV 2020).
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float = 0.5,
        scale: float = 64.0,
        centers_per_class: int = 1,
        miner: MinerArg = None,
    ) -> None:
        super().__init__(num_classes, embedding_dim, centers_per_class=centers_per_class, miner=miner)
        if not 0 <= margin < math.pi / 2:
            raise ValueError(f"margin must be in [0, pi/2) radians, got {margin}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.margin, self.scale = margin, scale
        self.logit_scale = scale

    def compute(self, S: torch.Tensor, relevance: torch.Tensor) -> LossOutput:
        cos = S.clamp(-1.0, 1.0)
        sin = (1.0 - cos * cos).clamp_min(1e-12).sqrt()
        cos_m, sin_m = math.cos(self.margin), math.sin(self.margin)
        shifted = torch.where(cos >= -cos_m, cos * cos_m - sin * sin_m, cos - self.margin * sin_m)
        logits = self.scale * torch.where(relevance == 1, shifted, S)
        return LossOutput(softmax_cross_entropy(logits, relevance))


@LOSSES.register("subcenter_arcface")
def subcenter_arcface(
    num_classes: int,
    embedding_dim: int,
    margin: float = 0.5,
    scale: float = 64.0,
    centers_per_class: int = 3,
    miner: MinerArg = None,
) -> ArcFaceLoss:
    """Sub-center ArcFace (Deng et al., ECCV 2020): K centers per class, the closest one scores."""
    return ArcFaceLoss(num_classes, embedding_dim, margin, scale, centers_per_class, miner)

"""A simplified OLTR meta-embedding classifier (Liu et al., "Large-Scale Long-Tailed Recognition in an
Open World", CVPR 2019), as a loss whose references are class centroids and class weights.

For a (B, D) direct feature v (the embedding), with a memory M of (C, D) class centroids:
    v_memory = softmax(T_hal(v)) M                     (hallucinated memory feature)
    e = tanh(T_sel(v))                                 (concept selector)
    gamma = r / min_c ||v - M_c||                      (reachability: small far from every class)
    v_meta = gamma (v + e * v_memory)
and the cosine-norm classifier scores s (|v_meta| / (1 + |v_meta|)) <v_meta / |v_meta|, w_c / |w_c|>,
so a sample far from every centroid gets flat scores (open-set rejection by confidence). The loss is
cross-entropy plus ``centroid_weight`` x the attraction of v to its class centroid. OLTR's modulated
attention on the feature maps is a pooling of the Embedder (``modulated_attention``, models/pooling.py);
the repelling term of its centroid loss is left out; the centroids are set from outside
(``set_centroids``: the ``oltr`` supervision refreshes them every epoch).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from metricvision.losses.base import LOSSES, LossOutput


@LOSSES.register("oltr_meta_embedding")
class MetaEmbeddingLoss(nn.Module):
    """Cross-entropy of the cosine-norm classifier on meta-embeddings, plus centroid attraction.

    Args:
        num_classes: C.
        embedding_dim: D.
        scale: s of the cosine-norm classifier.
        reachability_scale: r.
        centroid_weight: factor of 0.5 ||v - M_y||^2 (mean over the batch).
    """

    def __init__(self, num_classes: int, embedding_dim: int, scale: float = 16.0, reachability_scale: float = 1.0,
                 centroid_weight: float = 0.01) -> None:
        super().__init__()
        if num_classes < 1 or embedding_dim < 1:
            raise ValueError(f"num_classes and embedding_dim must be >= 1, got {num_classes}, {embedding_dim}")
        if scale <= 0 or reachability_scale <= 0:
            raise ValueError(f"scale and reachability_scale must be > 0, got {scale}, {reachability_scale}")
        self.scale, self.reachability_scale, self.centroid_weight = scale, reachability_scale, centroid_weight
        self.hallucinator = nn.Linear(embedding_dim, num_classes)
        self.selector = nn.Linear(embedding_dim, embedding_dim)
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_dim) * embedding_dim**-0.5)
        self.register_buffer("centroids", torch.zeros(num_classes, embedding_dim))
        self.register_buffer("has_centroids", torch.zeros((), dtype=torch.bool))

    def set_centroids(self, centroids: torch.Tensor) -> None:
        """Set the (C, D) memory of class centroids."""
        if centroids.shape != self.centroids.shape:
            raise ValueError(f"centroids must have shape {tuple(self.centroids.shape)}, got {tuple(centroids.shape)}")
        self.centroids.copy_(centroids)
        self.has_centroids.fill_(True)

    def meta_embedding(self, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, D) meta-embeddings and (B,) reachability of (B, D) direct features (v itself before any centroids)."""
        if not bool(self.has_centroids):
            return v, torch.ones(v.shape[0], dtype=v.dtype, device=v.device)
        M = self.centroids.to(v.dtype)
        reach = self.reachability_scale / torch.cdist(v, M).min(1).values.clamp_min(1e-6)
        memory = torch.softmax(self.hallucinator(v), dim=1) @ M
        selector = torch.tanh(self.selector(v))
        return reach[:, None] * (v + selector * memory), reach

    def logits(self, v: torch.Tensor) -> torch.Tensor:
        """(B, C) cosine-norm classifier scores of the meta-embeddings of (B, D) features."""
        meta, _ = self.meta_embedding(v)
        norm = meta.norm(dim=1, keepdim=True)
        squashed = norm / (1 + norm) * meta / norm.clamp_min(1e-12)
        return self.scale * squashed @ F.normalize(self.weight.to(v.dtype), dim=1).T

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        """Loss of (B, D) embeddings with (B,) labels in [0, C) (-1 ignored: a zero with a gradient if all are)."""
        keep = labels >= 0
        v, y = embeddings[keep], labels[keep]
        if not len(y):
            return LossOutput(embeddings.sum() * 0.0)
        ce = F.cross_entropy(self.logits(v), y)
        attract = 0.5 * ((v - self.centroids[y].to(v.dtype)) ** 2).sum(1).mean() if bool(self.has_centroids) else v.sum() * 0.0
        return LossOutput(ce + self.centroid_weight * attract, {"ce": float(ce.detach()), "centroid": float(attract.detach())})

    def own_lr_parameters(self) -> List[nn.Parameter]:
        """The hallucinator, the concept selector and the class weights."""
        return [p for p in self.parameters() if p.requires_grad]

    @torch.no_grad()
    def predict(self, v: torch.Tensor, batch: Optional[int] = 4096) -> torch.Tensor:
        """(N, C) classifier scores of (N, D) features, ``batch`` rows at a time."""
        step = batch or len(v)
        return torch.cat([self.logits(v[s : s + step]) for s in range(0, len(v), step)]) if len(v) else v.new_zeros(0, self.weight.shape[0])

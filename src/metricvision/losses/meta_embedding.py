"""A simplified OLTR meta-embedding classifier (Liu et al., "Large-Scale Long-Tailed Recognition in an
Open World", CVPR 2019), as a loss whose references are class centroids and class weights.

For a (B, D) direct feature v (the embedding), with a memory M of (C, D) class centroids:
    v_memory = softmax(T_hal(v)) M                     (hallucinated memory feature)
    e = tanh(T_sel(v))                                 (concept selector)
    gamma = r / min_c ||v - M_c||                      (reachability: small far from every class)
    v_meta = gamma (v + e * v_memory)
and the cosine-norm classifier scores s (|v_meta| / (1 + |v_meta|)) <v_meta / |v_meta|, w_c / |w_c|>,
so a sample far from every centroid gets flat scores (open-set rejection by confidence). The loss is
cross-entropy plus ``centroid_weight`` x OLTR's discriminative centroid loss: the attraction
0.5 ||v - M_y||^2 (mean over the batch) plus ``repel_weight`` x max(0, margin - the mean over the
(B, C) pairs of ||v - M_c||^2 with c != y, the pairs c = y counted as zeros), as OLTR's code.
The centroids are set from outside (``set_centroids``); with ``centroid_lr`` > 0 they also learn as
OLTR's: each training forward takes an SGD step of that rate (with ``centroid_momentum`` and
``centroid_weight_decay``, OLTR's 0.9 and 5e-4, as torch's SGD) on the centroid loss's gradient,
whose attraction part is OLTR's, sum over the class's samples of (M_c - v_i) / (1 + n_c) / B.
OLTR's modulated attention on the feature maps is a pooling of the Embedder
(``modulated_attention``, models/pooling.py).
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
        centroid_weight: factor of the centroid loss (attraction + repel_weight x repulsion).
        repel_weight: factor of the repulsion inside the centroid loss (OLTR: 0.01; 0: attraction only).
        repel_margin: the repulsion's margin on the mean squared distance to other classes' centroids (OLTR: 10).
        centroid_lr: rate of the centroids' own SGD step per training forward (0: set from outside only).
        centroid_momentum: momentum of that step (OLTR: 0.9; 0: plain SGD).
        centroid_weight_decay: weight decay of that step (OLTR: 5e-4).
    """

    gather_mode = "full"  # under DDP every rank sees the whole gathered batch (engine.distributed.gathered_loss)

    def __init__(self, num_classes: int, embedding_dim: int, scale: float = 16.0, reachability_scale: float = 1.0,
                 centroid_weight: float = 0.01, repel_weight: float = 0.0, repel_margin: float = 10.0,
                 centroid_lr: float = 0.0, centroid_momentum: float = 0.0, centroid_weight_decay: float = 0.0) -> None:
        super().__init__()
        if num_classes < 1 or embedding_dim < 1:
            raise ValueError(f"num_classes and embedding_dim must be >= 1, got {num_classes}, {embedding_dim}")
        if scale <= 0 or reachability_scale <= 0:
            raise ValueError(f"scale and reachability_scale must be > 0, got {scale}, {reachability_scale}")
        if min(repel_weight, repel_margin, centroid_lr, centroid_weight_decay) < 0:
            raise ValueError(f"repel_weight, repel_margin, centroid_lr and centroid_weight_decay must be >= 0, got "
                             f"{repel_weight}, {repel_margin}, {centroid_lr}, {centroid_weight_decay}")
        if not 0 <= centroid_momentum < 1:
            raise ValueError(f"centroid_momentum must be in [0, 1), got {centroid_momentum}")
        self.scale, self.reachability_scale, self.centroid_weight = scale, reachability_scale, centroid_weight
        self.repel_weight, self.repel_margin, self.centroid_lr = repel_weight, repel_margin, centroid_lr
        self.centroid_momentum, self.centroid_weight_decay = centroid_momentum, centroid_weight_decay
        self.learns_centroids = centroid_lr > 0
        self.hallucinator = nn.Linear(embedding_dim, num_classes)
        self.selector = nn.Linear(embedding_dim, embedding_dim)
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_dim) * embedding_dim**-0.5)
        self.register_buffer("centroids", torch.zeros(num_classes, embedding_dim))
        self.register_buffer("has_centroids", torch.zeros((), dtype=torch.bool))
        if self.learns_centroids and centroid_momentum > 0:
            self.register_buffer("centroid_velocity", torch.zeros(num_classes, embedding_dim))

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
        if not bool(self.has_centroids):
            return LossOutput(ce, {"ce": float(ce.detach()), "centroid": 0.0, "repel": 0.0})
        M = self.centroids.to(v.dtype)
        attract = 0.5 * ((v - M[y]) ** 2).sum(1).mean()
        repel = self.repulsion(v, M, y)
        if self.learns_centroids and self.training and torch.is_grad_enabled():
            self._step_centroids(v.detach(), y)
        value = ce + self.centroid_weight * (attract + self.repel_weight * repel)
        return LossOutput(value, {"ce": float(ce.detach()), "centroid": float(attract.detach()), "repel": float(repel.detach())})

    def repulsion(self, v: torch.Tensor, M: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """max(0, margin - sum of ||v_i - M_c||^2 over c != y_i / (B C)) of (B, D) features, (C, D) centroids, (B,) labels."""
        d2 = (v**2).sum(1, keepdim=True) + (M**2).sum(1) - 2 * v @ M.T  # (B, C), expanded as OLTR's code
        d2 = d2.masked_fill(F.one_hot(y, M.shape[0]).bool(), 0.0)
        return (self.repel_margin - d2.sum() / d2.numel()).clamp_min(0.0)

    def _step_centroids(self, v: torch.Tensor, y: torch.Tensor) -> None:
        """One SGD step (torch's rule: velocity = momentum x velocity + gradient + decay x M) of the (C, D) centroids on
        OLTR's centroid-loss gradient for detached (B, D) features, (B,) labels."""
        M = self.centroids.detach().clone().requires_grad_(True)
        counts = 1.0 + torch.bincount(y, minlength=M.shape[0]).to(v.dtype)
        attract = 0.5 * (((M[y] - v) ** 2).sum(1) / counts[y]).sum() / len(y)  # OLTR's (M_c - v_i) / (1 + n_c) / B
        (grad,) = torch.autograd.grad(self.centroid_weight * (attract + self.repel_weight * self.repulsion(v, M, y)), M)
        grad = grad + self.centroid_weight_decay * M.detach()
        if self.centroid_momentum > 0:
            self.centroid_velocity = self.centroid_momentum * self.centroid_velocity + grad
            grad = self.centroid_velocity
        self.centroids = self.centroids - self.centroid_lr * grad  # a new tensor: the logits' graph keeps the old one

    def own_lr_parameters(self) -> List[nn.Parameter]:
        """The hallucinator, the concept selector and the class weights."""
        return [p for p in self.parameters() if p.requires_grad]

    @torch.no_grad()
    def predict(self, v: torch.Tensor, batch: Optional[int] = 4096) -> torch.Tensor:
        """(N, C) classifier scores of (N, D) features, ``batch`` rows at a time."""
        step = batch or len(v)
        return torch.cat([self.logits(v[s : s + step]) for s in range(0, len(v), step)]) if len(v) else v.new_zeros(0, self.weight.shape[0])

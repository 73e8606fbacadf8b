"""The re-ID "bag of tricks" loss (Luo et al., CVPRW 2019): ID loss with label smoothing + batch-hard triplet."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from metricvision.losses.base import LOSSES, LossOutput, ProxyLoss, zero_loss
from metricvision.similarity import masks, relevance_from_labels, squared_distances


def batch_hard_triplet(
    features: torch.Tensor, labels: torch.Tensor, ref_features: torch.Tensor, ref_labels: torch.Tensor,
    margin: float, exclude_self: bool,
) -> torch.Tensor:
    """Mean over anchors of relu(max d(a, pos) - min d(a, neg) + margin), Euclidean d (Hermans et al. 2017).

    Args:
        features: (Q, D) anchors; ref_features: (R, D) the candidates.
        labels: (Q,); ref_labels: (R,). Anchors lacking a positive or a negative are left out.
    """
    d = squared_distances(features, ref_features).clamp_min(1e-12).sqrt()
    pos, neg = masks(relevance_from_labels(labels, ref_labels, exclude_self=exclude_self))
    valid = pos.any(dim=1) & neg.any(dim=1)
    if not valid.any():
        return zero_loss(d)
    d_ap = d.masked_fill(~pos, -torch.inf).max(dim=1).values
    d_an = d.masked_fill(~neg, torch.inf).min(dim=1).values
    return F.relu(d_ap - d_an + margin)[valid].mean() + zero_loss(d)


@LOSSES.register("bnneck_id_triplet")
class BNNeckIDTripletLoss(ProxyLoss):
    """ID (softmax with label smoothing) + batch-hard triplet (margin 0.3) over a BNNeck, as the BoT baseline.

    Fed by an Embedder with ``neck="bnneck"`` in training mode, the (B, 2 * D) embeddings are
    [f_t | f_i]: the triplet term reads f_t (before the batch norm, Euclidean distances) and
    the ID term classifies f_i (after it) with a bias-free linear classifier. Given (B, D)
    embeddings (no neck), both terms read the same feature. Center loss is not included.
    With references, the triplet term compares the queries to them.

    Args:
        num_classes: training identities.
        embedding_dim: D, the feature size of each half.
        margin: triplet margin.
        label_smoothing: epsilon of the smoothed targets (1 - eps) y + eps / C.
    """

    similarity_kind = "dot"

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.3, label_smoothing: float = 0.1) -> None:
        super().__init__(num_classes, embedding_dim)
        if margin <= 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.margin, self.label_smoothing = margin, label_smoothing
        nn.init.normal_(self.proxies, std=0.001)  # the classifier's initialization in the reference code

    def split(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2 D) or (B, D) embeddings -> (f_t, f_i), each (B, D)."""
        d = self.embedding_dim
        if embeddings.dim() != 2 or embeddings.shape[1] not in (d, 2 * d):
            raise ValueError(f"embeddings must be (B, {d}) or (B, {2 * d}) (a BNNeck's [before | after]), "
                             f"got {tuple(embeddings.shape)}")
        return (embeddings[:, :d], embeddings[:, d:]) if embeddings.shape[1] == 2 * d else (embeddings, embeddings)

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: Optional[torch.Tensor] = None,
        ref_labels: Optional[torch.Tensor] = None,
        **ids: Optional[torch.Tensor],
    ) -> LossOutput:
        """(B, 2 D) or (B, D) embeddings with (B,) identities (-1 ignored) -> ID + triplet."""
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise ValueError(f"label {int(labels.max())} out of range for num_classes={self.num_classes}")
        f_t, f_i = self.split(embeddings)
        if ref_embeddings is None:
            triplet = batch_hard_triplet(f_t, labels, f_t, labels, self.margin, exclude_self=True)
        else:
            if ref_labels is None:
                raise ValueError("ref_labels is required when ref_embeddings is given")
            triplet = batch_hard_triplet(f_t, labels, self.split(ref_embeddings)[0], ref_labels, self.margin, exclude_self=False)
        logits = self.class_similarity(f_i)
        labelled = labels >= 0
        if labelled.any():
            ident = F.cross_entropy(logits[labelled], labels[labelled], label_smoothing=self.label_smoothing)
        else:
            ident = zero_loss(logits)
        return LossOutput(ident + triplet, {"id": float(ident.detach()), "triplet": float(triplet.detach())})

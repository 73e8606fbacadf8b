"""Similarity matrices and the three-valued relevance used by every loss and metric.

Relevance values: ``RELEVANT`` (1), ``IRRELEVANT`` (0), ``IGNORED`` (-1, "junk").
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

RELEVANT = 1
IRRELEVANT = 0
IGNORED = -1

SIMILARITIES = ("cosine", "dot", "neg_sq_euclidean")


def similarity(queries: torch.Tensor, references: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Similarity matrix between two sets of vectors.

    Args:
        queries: (Q, D) embeddings.
        references: (R, D) embeddings.
        kind: "cosine" (inputs are L2-normalized here), "dot", or "neg_sq_euclidean"
            (minus the squared Euclidean distance, so larger is more similar).

    Returns:
        (Q, R) similarities.
    """
    if queries.dim() != 2 or references.dim() != 2:
        raise ValueError(
            f"queries and references must be 2-D (N, D), got {tuple(queries.shape)} and {tuple(references.shape)}"
        )
    if queries.shape[1] != references.shape[1]:
        raise ValueError(f"dimension mismatch: queries have D={queries.shape[1]}, references D={references.shape[1]}")
    if kind == "cosine":
        return F.normalize(queries, dim=1) @ F.normalize(references, dim=1).T
    if kind == "dot":
        return queries @ references.T
    if kind == "neg_sq_euclidean":
        return -squared_distances(queries, references)
    raise ValueError(f"unknown similarity kind '{kind}'; expected one of {SIMILARITIES}")


def crowding(x: torch.Tensor, references: torch.Tensor, k: int) -> torch.Tensor:
    """(n, D), (R, D) normalized -> (n,) each vector's mean cosine to its ``k`` nearest references: CSLS's r
    (Conneau et al., ICLR 2018), how much a vector sits in a crowded part of the space."""
    if not 1 <= k <= len(references):
        raise ValueError(f"k must be in [1, {len(references)}] (the number of references), got {k}")
    return (x @ references.T).topk(k, dim=1).values.mean(1)


def gallery_csls(queries: torch.Tensor, gallery: torch.Tensor, references: torch.Tensor, k: int) -> torch.Tensor:
    """(Q, D) queries, (N, D) gallery, (R, D) references, all normalized -> (Q, N) scores 2 cos - r_gallery: CSLS with
    the gallery's crowding measured among ``references`` (a query's own r is the same for every item of its ranking,
    so it is left out)."""
    return 2 * queries @ gallery.T - crowding(gallery, references, k)[None, :]


def squared_distances(queries: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """(Q, R) squared Euclidean distances, clamped at zero."""
    q2 = (queries * queries).sum(1, keepdim=True)
    r2 = (references * references).sum(1, keepdim=True).T
    return (q2 + r2 - 2.0 * queries @ references.T).clamp_min(0.0)


def relevance_from_labels(
    query_labels: torch.Tensor,
    reference_labels: torch.Tensor,
    exclude_self: bool = False,
    query_ids: Optional[torch.Tensor] = None,
    reference_ids: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Relevance from integer labels: same label -> RELEVANT, else IRRELEVANT.

    A query never counts itself: with ``exclude_self`` (queries and references are the
    same set, in the same order) the diagonal is IGNORED; with ids, every (q, r) whose
    ids are equal is IGNORED. Unlabeled items (label -1) are IGNORED everywhere.

    Args:
        query_labels: (Q,) int labels.
        reference_labels: (R,) int labels.

    Returns:
        (Q, R) int8 tensor of RELEVANT / IRRELEVANT / IGNORED.
    """
    ql = query_labels.reshape(-1, 1)
    rl = reference_labels.reshape(1, -1)
    rel = (ql == rl).to(torch.int8)
    unlabeled = (ql < 0) | (rl < 0)
    rel = rel.masked_fill(unlabeled, IGNORED)
    if exclude_self:
        if ql.shape[0] != rl.shape[1]:
            raise ValueError("exclude_self needs queries and references to be the same set")
        rel.fill_diagonal_(IGNORED)
    if query_ids is not None and reference_ids is not None:
        rel = rel.masked_fill(query_ids.reshape(-1, 1) == reference_ids.reshape(1, -1), IGNORED)
    return rel


def masks(relevance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (positive, negative) masks from a relevance tensor; IGNORED is in neither."""
    return relevance == RELEVANT, relevance == IRRELEVANT

"""Unsupervised metric learning by mining on manifolds (Iscen et al., CVPR 2018).

Anchors are the modes of the stationary distribution pi of a random walk on the mutual k-NN
graph (edge weights = similarities^3, transitions P = D^-1 A): samples with an edge whose pi is at
least that of each of their graph neighbours, the highest pi first (many relevant samples, spread
over the collection). For an anchor x, e_k(x) are its k Euclidean (cosine) neighbours and m_k(x) its k nearest
points by manifold similarity, the diffusion (I - alpha W)^-1 e_x on the k-NN graph.
Hard positives are manifold neighbours that are not Euclidean neighbours,
m_k(x) minus e_k(x); hard negatives are Euclidean neighbours that are not manifold
neighbours, e_k(x) minus m_k(x). Tuples (anchor, positive, negative) feed any pair loss
through the relevance: anchor-positive RELEVANT, anchor-negative IRRELEVANT, the rest IGNORED.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from metricvision.index.diffusion import diffuse
from metricvision.similarity import IGNORED, IRRELEVANT, RELEVANT
from metricvision.supervision.base import SUPERVISIONS, LabelsLike, Supervision
from metricvision.supervision.graph import knn_graph, normalize_affinity, stationary_distribution


@dataclass
class MinedPools:
    """Positive and negative pools of each anchor.

    Attributes:
        anchors: (A,) dataset indices of the anchors.
        positives: A lists of indices (manifold but not Euclidean neighbours).
        negatives: A lists of indices (Euclidean but not manifold neighbours).
    """

    anchors: torch.Tensor
    positives: List[torch.Tensor]
    negatives: List[torch.Tensor]


ANCHOR_SELECTIONS = ("stationary", "random", "all")


def stationary_modes(
    embeddings: torch.Tensor, num: int, graph_k: int = 10, gamma: float = 3.0, damping: float = 0.99
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Anchors as modes of the random walk's stationary distribution on the k-NN graph.

    Args:
        embeddings: (N, D) embeddings (cosine similarity).
        num: anchors to return at most (the modes with the highest probability).
        graph_k, gamma: the mutual k-NN graph (``knn_graph(..., kind="mutual")``); a node with at least
            one edge is a mode when its probability is >= that of each of its neighbours in that graph.
        damping: see ``stationary_distribution``.

    Returns:
        (A,) anchor indices, highest probability first, and the (N,) stationary distribution.
    """
    A = knn_graph(embeddings, graph_k, gamma, kind="mutual")
    pi = stationary_distribution(A, damping)
    r, c = A.indices()
    best_neighbour = torch.full_like(pi, float("inf")).scatter_reduce(0, r, pi[c], "amax", include_self=False)
    modes = (pi >= best_neighbour).nonzero().squeeze(1)  # a node without an edge keeps +inf: never a mode
    return modes[pi[modes].argsort(descending=True, stable=True)][:num], pi


def mine_on_manifold(
    embeddings: torch.Tensor,
    anchors: torch.Tensor,
    k: int = 10,
    graph_k: int = 10,
    gamma: float = 3.0,
    alpha: float = 0.99,
    max_iter: int = 20,
) -> MinedPools:
    """Positive and negative pools of ``anchors`` from Euclidean vs manifold neighbourhoods.

    Args:
        embeddings: (N, D) embeddings (cosine similarity).
        anchors: (A,) indices of the anchors.
        k: size of both neighbourhoods, e_k and m_k (the anchor itself excluded).
        graph_k, gamma: k-NN graph parameters.
        alpha: diffusion parameter in (0, 1).
        max_iter: conjugate-gradient iterations.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    x = F.normalize(embeddings.detach().float().cpu(), dim=1)
    anchors = torch.as_tensor(anchors, dtype=torch.int64).reshape(-1)
    n = x.shape[0]
    k = min(k, n - 1)
    Wn = normalize_affinity(knn_graph(x, graph_k, gamma))
    Y = torch.zeros(n, anchors.shape[0])
    Y[anchors, torch.arange(anchors.shape[0])] = 1.0
    manifold = diffuse(Wn, Y, alpha, max_iter=max_iter).T  # (A, N)
    euclid = x[anchors] @ x.T
    manifold[torch.arange(anchors.shape[0]), anchors] = -float("inf")
    euclid[torch.arange(anchors.shape[0]), anchors] = -float("inf")
    m_top = manifold.topk(k, dim=1).indices
    e_top = euclid.topk(k, dim=1).indices
    positives, negatives = [], []
    for a in range(anchors.shape[0]):
        positives.append(m_top[a][~torch.isin(m_top[a], e_top[a])])
        negatives.append(e_top[a][~torch.isin(e_top[a], m_top[a])])
    return MinedPools(anchors, positives, negatives)


@SUPERVISIONS.register("manifold_mining")
class ManifoldMining(Supervision):
    """Tuples mined on the manifold of the current embeddings, refreshed each epoch; no labels.

    Batches are (anchor, positive, negative) tuples. For a loss that reads labels, tuple t
    of a batch gets label 2t for its anchor and positive and 2t + 1 for its negative, so
    the positive is the anchor's only relevant item and everything else is irrelevant; with the
    loss's ``miner: tuple`` only each anchor's pairs with its own positive and negative count, as
    in the paper (the other tuples of the batch are then not negatives).

    Args:
        num_samples: N, the size of the training set (None: bound by the Trainer).
        num_anchors: anchors per refresh at most.
        k, graph_k, gamma, alpha, max_iter: see ``mine_on_manifold``.
        seed: random seed of the batches (and of the anchors with ``anchor_selection="random"``).
        anchor_selection: "stationary" (the modes of ``stationary_modes``, as the paper), "random"
            (the paper's ablation) or "all" (every sample, ``num_anchors`` ignored, as the authors'
            script for CUB-200-2011).
        damping: see ``stationary_distribution``.
    """

    needs_embeddings = True

    def __init__(
        self,
        num_samples: Optional[int] = None,
        num_anchors: int = 512,
        k: int = 10,
        graph_k: int = 10,
        gamma: float = 3.0,
        alpha: float = 0.99,
        max_iter: int = 20,
        seed: int = 0,
        anchor_selection: str = "stationary",
        damping: float = 0.99,
    ) -> None:
        if anchor_selection not in ANCHOR_SELECTIONS:
            raise ValueError(f"anchor_selection must be one of {ANCHOR_SELECTIONS}, got '{anchor_selection}'")
        self.anchor_selection, self.damping = anchor_selection, damping
        self.num_anchors, self.k, self.graph_k = num_anchors, k, graph_k
        self.gamma, self.alpha, self.max_iter = gamma, alpha, max_iter
        self.generator = torch.Generator().manual_seed(seed)
        self.pools_: Optional[MinedPools] = None
        self._pairs: Dict[tuple, int] = {}
        super().__init__(None if num_samples is None else [-1] * num_samples)

    def bind(self, labels: LabelsLike) -> None:
        """Only the number of samples is used: this setting sees no labels."""
        n = len(labels)
        if n < 3:
            raise ValueError(f"manifold mining needs at least 3 samples, got {n}")
        super().bind([-1] * n)
        self.weights_ = torch.ones(n)

    def refresh(self, embeddings: torch.Tensor) -> Dict[str, float]:
        """Choose anchors and mine their pools on the (N, D) embeddings."""
        n = len(self)
        if self.anchor_selection == "stationary":
            anchors, _ = stationary_modes(embeddings, self.num_anchors, self.graph_k, self.gamma, self.damping)
        elif self.anchor_selection == "random":
            anchors = torch.randperm(n, generator=self.generator)[: min(self.num_anchors, n)]
        else:
            anchors = torch.arange(n)
        self.pools_ = mine_on_manifold(embeddings, anchors, self.k, self.graph_k, self.gamma, self.alpha, self.max_iter)
        self._pairs = {}
        for a, pos, neg in zip(self.pools_.anchors.tolist(), self.pools_.positives, self.pools_.negatives):
            for j in neg.tolist():
                self._pairs[(a, j)] = self._pairs[(j, a)] = IRRELEVANT
            for j in pos.tolist():
                self._pairs[(a, j)] = self._pairs[(j, a)] = RELEVANT
        usable = sum(1 for p, q in zip(self.pools_.positives, self.pools_.negatives) if len(p) and len(q))
        return {"anchors": float(len(anchors)), "anchors_with_tuples": float(usable)}

    def relevance(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, B) relevance: mined positive pairs RELEVANT, mined negative pairs IRRELEVANT."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1).tolist()
        rel = torch.full((len(idx), len(idx)), IGNORED, dtype=torch.int8)
        for a, i in enumerate(idx):
            for b, j in enumerate(idx):
                v = self._pairs.get((i, j))
                if v is not None and a != b:
                    rel[a, b] = v
        return rel

    def batches(self, batch_size: int, num_batches: int, generator: Optional[torch.Generator] = None) -> List[List[int]]:
        """``num_batches`` batches of batch_size // 3 (anchor, positive, negative) tuples.

        As in the authors' training code, an epoch is as many tuples as the schedule asks for, not one
        per anchor: anchors are drawn in turn from random permutations of those with both pools non-empty
        (an anchor repeats only once all have been drawn), each tuple with a random positive and a random
        negative of its anchor's pools.
        """
        if self.pools_ is None:
            raise RuntimeError("call refresh(embeddings) before drawing batches")
        g = generator or self.generator
        usable = [(a, pos, neg) for a, pos, neg in zip(self.pools_.anchors.tolist(), self.pools_.positives, self.pools_.negatives)
                  if len(pos) and len(neg)]
        if not usable:
            return []
        per = max(1, batch_size // 3)
        order: List[int] = []
        out = []
        for _ in range(num_batches):
            batch: List[int] = []
            for _ in range(per):
                if not order:
                    order = torch.randperm(len(usable), generator=g).tolist()
                a, pos, neg = usable[order.pop()]
                p = pos[torch.randint(len(pos), (1,), generator=g)].item()
                q = neg[torch.randint(len(neg), (1,), generator=g)].item()
                batch += [a, p, q]
            out.append(batch)
        return out

    def targets(self, trainer: Any, indices: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Tuple labels by position: anchor and positive 2t, negative 2t + 1."""
        return tuple_labels(len(indices))


def tuple_labels(batch_size: int) -> torch.Tensor:
    """(B,) labels of a batch of consecutive (anchor, positive, negative) tuples."""
    pos = torch.arange(batch_size)
    return 2 * (pos // 3) + (pos % 3 == 2).long()

"""Few-shot learning: episodes, prototypical and cosine classifiers (Snell et al., NeurIPS
2017), the dense classification loss (after Lifchitz et al., CVPR 2019; the Trainer trains the
backbone with it through ``supervision/dense.py``) and, for the frozen-feature benchmark, a
stand-in for implanting: a single 1x1 convolution on given frozen maps trained on an episode's
support set (implanting beside a trained backbone's last block is ``supervision/implant.py``).
Few-shot accuracy of fixed embeddings with its 95% interval is ``metricvision.metrics.few_shot_accuracy``."""
from __future__ import annotations

import math
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metricvision.similarity import similarity
from metricvision.supervision.base import SUPERVISIONS, LabelsLike, Supervision

CLASSIFIERS = ("prototypical", "cosine")


class EpisodeSampler:
    """N-way K-shot episodes with Q queries per class.

    Args:
        labels: (N,) int labels (-1 never drawn).
        n_way, k_shot, n_query: episode shape.
        episodes: episodes per pass.
        seed: random seed.

    Yields:
        (support (n_way * k_shot,), query (n_way * n_query,)) dataset indices, ordered by
        class: the episode label of position i is i // k_shot (support), i // n_query (query).
    """

    def __init__(self, labels: LabelsLike, n_way: int = 5, k_shot: int = 1, n_query: int = 15, episodes: int = 2000, seed: int = 0) -> None:
        if min(n_way, k_shot, n_query, episodes) < 1:
            raise ValueError(f"n_way, k_shot, n_query, episodes must be >= 1, got {n_way}, {k_shot}, {n_query}, {episodes}")
        y = np.asarray(labels).reshape(-1)
        need = k_shot + n_query
        self.by_class = {int(c): np.flatnonzero(y == c) for c in np.unique(y[y >= 0])}
        self.by_class = {c: i for c, i in self.by_class.items() if len(i) >= need}
        if len(self.by_class) < n_way:
            raise ValueError(f"{n_way}-way episodes need {n_way} classes with >= {need} samples, found {len(self.by_class)}")
        self.n_way, self.k_shot, self.n_query, self.episodes, self.seed = n_way, k_shot, n_query, episodes, seed

    def __len__(self) -> int:
        return self.episodes

    def __iter__(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        rng = np.random.default_rng(self.seed)
        classes = np.array(sorted(self.by_class))
        for _ in range(self.episodes):
            support, query = [], []
            for c in rng.choice(classes, self.n_way, replace=False):
                pick = rng.choice(self.by_class[int(c)], self.k_shot + self.n_query, replace=False)
                support.append(pick[: self.k_shot])
                query.append(pick[self.k_shot :])
            yield np.concatenate(support), np.concatenate(query)


def prototypes(support: torch.Tensor, n_way: int, k_shot: int) -> torch.Tensor:
    """(n_way * k_shot, D) class-ordered support embeddings -> (n_way, D) class means."""
    return support.reshape(n_way, k_shot, -1).mean(1)


def classify(queries: torch.Tensor, protos: torch.Tensor, classifier: str = "prototypical", scale: float = 10.0) -> torch.Tensor:
    """(Q, n_way) logits of queries against prototypes.

    "prototypical": minus the squared Euclidean distance (Snell et al.);
    "cosine": ``scale`` times the cosine similarity.
    """
    if classifier == "prototypical":
        return similarity(queries, protos, "neg_sq_euclidean")
    if classifier == "cosine":
        return scale * similarity(queries, protos, "cosine")
    raise ValueError(f"classifier must be one of {CLASSIFIERS}, got '{classifier}'")


def mean_and_interval(values: np.ndarray) -> Dict[str, float]:
    """{"accuracy": mean, "ci95": 1.96 * std / sqrt(n), "episodes": n} of per-episode accuracies
    computed outside ``metrics.few_shot_accuracy`` (which scores fixed embeddings by prototypes),
    e.g. when every episode trains an implant."""
    n = len(values)
    std = float(values.std(ddof=1)) if n > 1 else 0.0
    return {"accuracy": float(values.mean()), "ci95": 1.96 * std / math.sqrt(max(n, 1)), "episodes": float(n)}


class CosineClassifier(nn.Module):
    """Cosine classifier: logits = scale * cos(x, w_c), one learned weight per class.

    Args:
        num_classes: C.
        dim: D.
        scale: logit scale.
    """

    def __init__(self, num_classes: int, dim: int, scale: float = 10.0) -> None:
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ValueError(f"num_classes and dim must be >= 1, got {num_classes}, {dim}")
        self.weight = nn.Parameter(torch.randn(num_classes, dim) / math.sqrt(dim))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, C) logits."""
        return self.scale * similarity(x, self.weight, "cosine")


def dense_classification_loss(dense: torch.Tensor, labels: torch.Tensor, classifier: CosineClassifier) -> torch.Tensor:
    """A simplified dense classification (after Lifchitz et al.): every location of the given
    (N, D, h, w) feature map is classified into the image's class by ``classifier``;
    cross-entropy averaged over locations; what produces ``dense`` learns from it (the whole
    backbone with ``supervision/dense.py``, as the paper)."""
    n, d, h, w = dense.shape
    logits = classifier(dense.permute(0, 2, 3, 1).reshape(-1, d))
    return F.cross_entropy(logits, labels.repeat_interleave(h * w))


class Implant(nn.Module):
    """A simplified implant (after Lifchitz et al.): one new 1x1 convolution on frozen feature
    maps, its pooled output concatenated to the frozen embedding; trained on the support set
    only (the paper implants convolutions beside the backbone's last layers).

    Args:
        in_channels: C of the frozen feature maps.
        dim: implant output size.
    """

    def __init__(self, in_channels: int, dim: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, dim, 1)

    def forward(self, maps: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) frozen maps and (N, D) frozen embeddings -> (N, D + dim), normalized."""
        extra = F.relu(self.conv(maps)).mean((2, 3))
        return torch.cat([F.normalize(base, dim=1), F.normalize(extra, dim=1)], 1)


def implant_episode(
    support_maps: torch.Tensor,
    support_base: torch.Tensor,
    query_maps: torch.Tensor,
    query_base: torch.Tensor,
    n_way: int,
    k_shot: int,
    dim: int = 32,
    steps: int = 20,
    lr: float = 0.05,
    scale: float = 10.0,
    seed: int = 0,
) -> torch.Tensor:
    """Train an implant on one episode's support set, then classify its queries.

    The implant is trained with dense classification of every support location against
    the support prototypes (cosine classifier), then queries are classified by the cosine
    classifier on the concatenated features.

    Returns:
        (Q, n_way) logits.
    """
    torch.manual_seed(seed)
    implant = Implant(support_maps.shape[1], dim)
    opt = torch.optim.SGD(implant.parameters(), lr=lr, momentum=0.9)
    y = torch.arange(n_way).repeat_interleave(k_shot)
    for _ in range(steps):
        feats = implant(support_maps, support_base)
        protos = prototypes(feats, n_way, k_shot).detach()
        dense = F.relu(implant.conv(support_maps))  # (S, dim, h, w)
        n, d, h, w = dense.shape
        loc = F.normalize(dense.permute(0, 2, 3, 1).reshape(-1, d), dim=1)
        loc = torch.cat([F.normalize(support_base, dim=1).repeat_interleave(h * w, 0), loc], 1)
        loss = F.cross_entropy(scale * similarity(loc, protos, "cosine"), y.repeat_interleave(h * w))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        protos = prototypes(implant(support_maps, support_base), n_way, k_shot)
        return classify(implant(query_maps, query_base), protos, "cosine", scale)


@SUPERVISIONS.register("episodic")
class Episodic(Supervision):
    """Episodic training: each batch is an N-way episode of K + Q samples per class.

    Args:
        n_way: classes per episode.
        k_shot, n_query: samples per class are k_shot + n_query.
    """

    def __init__(self, labels: Optional[LabelsLike] = None, n_way: int = 20, k_shot: int = 1, n_query: int = 3) -> None:
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        super().__init__(labels, samples_per_class=k_shot + n_query)

    def batches(self, batch_size: int, num_batches: int, generator: Optional[torch.Generator] = None) -> List[List[int]]:
        """``num_batches`` episodes (the batch size is n_way * (k_shot + n_query))."""
        return super().batches(self.n_way * self.samples_per_class, num_batches, generator)

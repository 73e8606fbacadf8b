"""Class-incremental learning (iCaRL, Rebuffi et al., CVPR 2017): tasks of new classes, an
exemplar memory chosen by herding under a fixed budget, the nearest-mean-of-exemplars
classifier, and the measures of the protocol (average incremental accuracy, forgetting)."""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from metricvision.similarity import similarity


def herding(features: torch.Tensor, m: int) -> torch.Tensor:
    """iCaRL herding: pick m exemplars whose running mean best approximates the class mean.

    At step t it takes argmin_x || mu - (sum of the t - 1 chosen + x) / t || over the
    samples not chosen yet (features are L2-normalized first).

    Args:
        features: (n, D) features of one class.
        m: exemplars to pick (clipped to n).

    Returns:
        (min(m, n),) indices in selection order (a prefix is the herding set of a smaller budget).
    """
    x = F.normalize(features.detach().float(), dim=1)
    mu = x.mean(0)
    chosen: List[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(x.shape[0], dtype=torch.bool)
    for t in range(1, min(m, x.shape[0]) + 1):
        dist = ((mu[None] - (running[None] + x) / t) ** 2).sum(1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        running += x[i]
    return torch.tensor(chosen, dtype=torch.int64)


class ExemplarMemory:
    """A fixed budget of exemplars shared equally by the classes seen so far.

    Args:
        budget: total number of exemplars K; each of C classes keeps K // C.
    """

    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ValueError(f"budget must be >= 1, got {budget}")
        self.budget = budget
        self.exemplars_: Dict[int, torch.Tensor] = {}

    def per_class(self, num_classes: int) -> int:
        """Exemplars per class when ``num_classes`` are stored."""
        return max(1, self.budget // max(1, num_classes))

    def update(self, features: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        """Add the new classes of (n, D) ``features`` with dataset ``indices``, then shrink all.

        Old classes keep the prefix of their herding order (iCaRL's reduction step).
        """
        new = [int(c) for c in torch.unique(labels) if int(c) not in self.exemplars_]
        m = self.per_class(len(self.exemplars_) + len(new))
        for c in list(self.exemplars_):
            self.exemplars_[c] = self.exemplars_[c][:m]
        for c in new:
            rows = (labels == c).nonzero().squeeze(1)
            self.exemplars_[c] = indices[rows[herding(features[rows], m)]]

    def indices(self) -> torch.Tensor:
        """All stored dataset indices."""
        return torch.cat(list(self.exemplars_.values())) if self.exemplars_ else torch.empty(0, dtype=torch.int64)

    def __len__(self) -> int:
        return int(sum(len(v) for v in self.exemplars_.values()))


def class_means(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, D) normalized means of normalized features per class, and the (C,) classes."""
    classes = torch.unique(labels)
    x = F.normalize(features.float(), dim=1)
    means = torch.stack([x[labels == c].mean(0) for c in classes])
    return F.normalize(means, dim=1), classes


def nearest_mean_of_exemplars(queries: torch.Tensor, means: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(Q,) predicted classes: the nearest (cosine) exemplar mean."""
    return classes[similarity(queries, means, "cosine").argmax(1)]


def class_incremental_tasks(classes: Sequence[int], num_tasks: int, seed: int = 0) -> List[np.ndarray]:
    """Split classes in a random order into ``num_tasks`` tasks of (almost) equal size."""
    classes = np.asarray(sorted(set(int(c) for c in classes)))
    if not 1 <= num_tasks <= len(classes):
        raise ValueError(f"num_tasks must be in [1, {len(classes)}], got {num_tasks}")
    return np.array_split(np.random.default_rng(seed).permutation(classes), num_tasks)


def incremental_scores(accuracy: np.ndarray) -> Dict[str, float]:
    """Average incremental accuracy and forgetting from a (T, T) accuracy matrix.

    ``accuracy[t, j]`` is the accuracy on task j's classes after training task t (j <= t).
    Average incremental accuracy is the mean over t of the accuracy on all classes seen so
    far (here the mean of the row's seen tasks, tasks being of equal size); forgetting is
    the mean over old tasks j < T - 1 of max_{t < T - 1} accuracy[t, j] - accuracy[T - 1, j]
    (Chaudhry et al., 2018).
    """
    a = np.asarray(accuracy, dtype=np.float64)
    T = a.shape[0]
    per_step = [a[t, : t + 1].mean() for t in range(T)]
    forgetting = [a[j : T - 1, j].max() - a[T - 1, j] for j in range(T - 1)]
    return {
        "average_incremental_accuracy": float(np.mean(per_step)),
        "final_accuracy": float(per_step[-1]),
        "forgetting": float(np.mean(forgetting)) if forgetting else 0.0,
    }

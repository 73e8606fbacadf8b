"""Class-incremental learning (iCaRL, Rebuffi et al., CVPR 2017): tasks of new classes, an
exemplar memory chosen by herding under a fixed budget, and iCaRL's binary cross-entropy
loss with distillation from the previous model; the nearest-mean-of-exemplars classifier is
``metricvision.metrics.classify.ncm_predict`` and the protocol's measures (average incremental
accuracy, forgetting) are ``metricvision.metrics.incremental_scores``."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F


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


def icarl_loss(logits: torch.Tensor, labels: torch.Tensor, old_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
    """iCaRL's representation loss: binary cross-entropy over the (B, C) logits of the seen classes.

    The target of a new class is its one-hot label; the targets of the C_old classes of the
    previous step are the previous model's sigmoid outputs (distillation).

    Args:
        logits: (B, C) logits of the current model over all seen classes.
        labels: (B,) int labels in [0, C).
        old_logits: (B, C_old) logits of the previous model, C_old <= C; None at the first step.
    """
    targets = F.one_hot(labels, logits.shape[1]).float()
    if old_logits is not None:
        targets[:, : old_logits.shape[1]] = torch.sigmoid(old_logits)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]


def class_incremental_tasks(classes: Sequence[int], num_tasks: int, seed: int = 0) -> List[np.ndarray]:
    """Split classes in a random order into ``num_tasks`` tasks of (almost) equal size."""
    classes = np.asarray(sorted(set(int(c) for c in classes)))
    if not 1 <= num_tasks <= len(classes):
        raise ValueError(f"num_tasks must be in [1, {len(classes)}], got {num_tasks}")
    return np.array_split(np.random.default_rng(seed).permutation(classes), num_tasks)

"""Batch samplers: class-balanced PK batches for metric learning."""
from __future__ import annotations

from typing import Dict, Iterator, List, Sequence

import numpy as np
import torch


class PKSampler(torch.utils.data.Sampler[List[int]]):
    """Yields batches of P classes x K samples (with replacement inside a class smaller than K).

    Deterministic given (seed, epoch): call ``set_epoch`` before iterating so a resumed run
    replays the same batches.

    Args:
        labels: (N,) labels; samples with label < 0 are never drawn.
        batch_size: P * K.
        k: samples per class.
        seed: base seed.
        batches_per_epoch: default len(labelled samples) // batch_size.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, k: int = 4, seed: int = 0, batches_per_epoch: int | None = None) -> None:
        if k < 1 or batch_size % k:
            raise ValueError(f"batch_size must be a positive multiple of k, got batch_size={batch_size}, k={k}")
        labels = np.asarray(labels)
        self.by_class: Dict[int, np.ndarray] = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels[labels >= 0])}
        self.p, self.k, self.seed, self.epoch = batch_size // k, k, seed, 0
        if len(self.by_class) < self.p:
            raise ValueError(f"batch needs {self.p} classes but the data has only {len(self.by_class)}")
        n = int((labels >= 0).sum())
        self.batches_per_epoch = batches_per_epoch or max(1, n // batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches are produced next."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[List[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        classes = np.array(sorted(self.by_class))
        order: List[int] = []
        for _ in range(self.batches_per_epoch):
            if len(order) < self.p:
                order += rng.permutation(classes).tolist()
            chosen, order = order[: self.p], order[self.p :]
            batch: List[int] = []
            for c in chosen:
                idx = self.by_class[c]
                batch += rng.choice(idx, self.k, replace=len(idx) < self.k).tolist()
            yield batch

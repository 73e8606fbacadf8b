"""Classification by embeddings for the class-level protocols: nearest class mean (cosine).

The nearest-class-mean rule is the one iCaRL (Rebuffi et al. 2017) and the long-tail
decoupling study (Kang et al. 2020, "NCM") use on top of a learned representation.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F


def class_means(embeddings: torch.Tensor, labels: np.ndarray) -> Tuple[np.ndarray, torch.Tensor]:
    """Classes (C,) and their L2-normalized mean embeddings (C, D)."""
    classes, inverse = np.unique(labels, return_inverse=True)
    sums = torch.zeros(len(classes), embeddings.shape[1]).index_add_(0, torch.as_tensor(inverse), embeddings.float())
    return classes, F.normalize(sums, dim=1)


def ncm_scores(embeddings: torch.Tensor, means: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """(N, C) cosine similarity of L2-normalized (N, D) embeddings to (C, D) class means."""
    return torch.cat([embeddings[s : s + chunk].float() @ means.T for s in range(0, len(embeddings), chunk)])


def ncm_predict(train: torch.Tensor, train_labels: np.ndarray, test: torch.Tensor) -> np.ndarray:
    """(N,) predicted labels of ``test`` by the nearest class mean of ``train``."""
    classes, means = class_means(train, train_labels)
    return classes[ncm_scores(test, means).argmax(1).numpy()]

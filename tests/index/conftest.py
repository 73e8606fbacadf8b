"""Shared tiny data for index tests: clustered, L2-normalized vectors."""
from __future__ import annotations

import numpy as np
import pytest


def clustered(n: int, dim: int, clusters: int, seed: int, noise: float = 0.3) -> np.ndarray:
    """(n, dim) float32 unit vectors around ``clusters`` random centers."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim))
    x = centers[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="session")
def data() -> tuple[np.ndarray, np.ndarray]:
    """(database (4000, 32), queries (50, 32))."""
    x = clustered(4050, 32, 40, seed=0)
    return x[:4000], x[4000:]


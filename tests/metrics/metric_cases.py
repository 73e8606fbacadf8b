"""Data for the property tests: vectors whose inner products are exact in float32."""
from __future__ import annotations

import numpy as np

KINDS = ("grid", "integers", "duplicates")


def grid_vectors(rng: np.random.Generator, n: int, dim: int, kind: str, dtype: type) -> np.ndarray:
    """(n, dim) vectors whose inner products are exact in float32."""
    if kind == "grid":
        x = rng.integers(-1024, 1025, (n, dim)) / 256
    elif kind == "integers":
        x = rng.integers(-2, 3, (n, dim))
    else:
        x = rng.integers(-2, 3, (max(1, n // 4), dim))[rng.integers(0, max(1, n // 4), n)]
    return x.astype(dtype)

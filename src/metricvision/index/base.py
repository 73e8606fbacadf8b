"""The Index protocol (faiss-shaped: numpy in, numpy out, results (n, k) padded with -1)."""
from __future__ import annotations

from typing import Optional, Protocol, Tuple, Union, runtime_checkable

import numpy as np
import torch

from metricvision._registry import Registry

ArrayLike = Union[np.ndarray, torch.Tensor]
INDEXES: Registry["Index"] = Registry("index")


@runtime_checkable
class Index(Protocol):
    """What every index offers."""

    dim: int

    def add(self, x: ArrayLike, ids: Optional[ArrayLike] = None) -> None:
        """Add (N, D) vectors with optional (N,) int64 ids (default: running count)."""

    def search(self, q: ArrayLike, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k for (Q, D) queries -> (scores (Q, k) float32, ids (Q, k) int64, -1 padded)."""

    def __len__(self) -> int:
        """Number of stored vectors."""


def as_float32(x: ArrayLike, dim: Optional[int] = None, name: str = "x") -> np.ndarray:
    """(N, D) float32 C-contiguous numpy array; checks the shape."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} must have dimension {dim}, got {x.shape[1]}")
    return x


def check_finite(x: np.ndarray, name: str = "x") -> None:
    """Error naming the first row of (N, D) ``x`` that holds NaN or inf."""
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"{name} must be finite: {int(bad.sum())} rows hold NaN or inf, the first is row {int(np.argmax(bad))}")


def as_ids(ids: Optional[ArrayLike], n: int, start: int) -> np.ndarray:
    """(n,) int64 ids; ``start..start+n`` when None."""
    if ids is None:
        return np.arange(start, start + n, dtype=np.int64)
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.shape[0] != n:
        raise ValueError(f"ids must have {n} entries (one per vector), got {ids.shape[0]}")
    return ids

"""Whitening of global descriptors: PCA whitening and learned whitening from matching pairs.

Both are linear maps ``(x - mean_) @ projection_`` followed by L2 normalization, fitted in
float64 with numpy; inputs and outputs are (N, D) arrays or tensors (the type is kept).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

from metricvision._atomic import atomic_write
from metricvision.index.base import ArrayLike, as_float32


def _cholesky(s: np.ndarray) -> np.ndarray:
    """Cholesky factor, adding a growing ridge until ``s`` is positive definite (as cirtorch)."""
    ridge = 0.0
    while True:
        try:
            return np.linalg.cholesky(s + ridge * np.eye(s.shape[0]))
        except np.linalg.LinAlgError:
            ridge = 1e-10 if ridge == 0 else ridge * 10


def _eig_desc(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns) of a symmetric matrix."""
    values, vectors = np.linalg.eigh(m)
    return values[::-1], vectors[:, ::-1]


class _Whitening:
    """Shared transform; subclasses set ``mean_`` (D,) and ``projection_`` (D, d) in ``fit``."""

    dim: Optional[int]
    normalize: bool
    mean_: np.ndarray
    projection_: np.ndarray

    def _check_dim(self, d: int) -> int:
        out = d if self.dim is None else self.dim
        if not 1 <= out <= d:
            raise ValueError(f"dim must be in [1, {d}] for {d}-d inputs, got {self.dim}")
        return out

    def transform(self, x: ArrayLike) -> ArrayLike:
        """(N, D) -> (N, d) whitened (and L2-normalized when ``normalize``)."""
        if not hasattr(self, "projection_"):
            raise RuntimeError(f"{type(self).__name__}.fit must be called before transform")
        xa = as_float32(x, self.mean_.shape[0])
        out = (xa.astype(np.float64) - self.mean_) @ self.projection_
        if self.normalize:
            out /= np.linalg.norm(out, axis=1, keepdims=True) + 1e-6
        out = out.astype(np.float32)
        return torch.from_numpy(out).to(x.device) if isinstance(x, torch.Tensor) else out


class PCAWhitening(_Whitening):
    """PCA whitening with optional dimensionality reduction and covariance shrinkage.

    Args:
        dim: output dimension (None keeps D).
        shrinkage: s in [0, 1]; the covariance becomes (1 - s) C + s (tr C / D) I,
            which damps the boost of low-variance directions.
        normalize: L2-normalize the outputs.
        eps: added to eigenvalues before the inverse square root.
    """

    def __init__(self, dim: Optional[int] = None, shrinkage: float = 0.0, normalize: bool = True, eps: float = 1e-9) -> None:
        if not 0 <= shrinkage <= 1:
            raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
        self.dim, self.shrinkage, self.normalize, self.eps = dim, shrinkage, normalize, eps

    def fit(self, x: ArrayLike) -> "PCAWhitening":
        """Fit on (N, D) descriptors."""
        xa = as_float32(x).astype(np.float64)
        if xa.shape[0] < 2:
            raise ValueError(f"PCA whitening needs at least 2 vectors, got {xa.shape[0]}")
        d = self._check_dim(xa.shape[1])
        self.mean_ = xa.mean(0)
        cov = np.cov(xa - self.mean_, rowvar=False).reshape(xa.shape[1], xa.shape[1])
        cov = (1 - self.shrinkage) * cov + self.shrinkage * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
        values, vectors = _eig_desc(cov)
        self.eigenvalues_ = values[:d]
        self.projection_ = vectors[:, :d] / np.sqrt(np.maximum(values[:d], 0) + self.eps)
        return self


class LearnedWhitening(_Whitening):
    """Learned whitening from matching pairs (Lw; Radenovic et al., TPAMI 2018).

    The covariance of differences of matching pairs is whitened by its Cholesky factor,
    then the whitened descriptors are rotated onto their principal axes (cirtorch ``whitenlearn``).

    Args:
        dim: output dimension (None keeps D).
        normalize: L2-normalize the outputs.
    """

    def __init__(self, dim: Optional[int] = None, normalize: bool = True) -> None:
        self.dim, self.normalize = dim, normalize

    def fit(self, x: ArrayLike, pairs: ArrayLike) -> "LearnedWhitening":
        """Fit on (N, D) descriptors and (P, 2) index pairs (query, matching positive)."""
        xa = as_float32(x).astype(np.float64)
        p = np.asarray(pairs.cpu().numpy() if isinstance(pairs, torch.Tensor) else pairs, dtype=np.int64)
        if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] == 0:
            raise ValueError(f"pairs must be (P, 2) indices with P >= 1, got shape {p.shape}")
        if p.min() < 0 or p.max() >= xa.shape[0]:
            raise ValueError(f"pairs index rows 0..{xa.shape[0] - 1}, got values in [{p.min()}, {p.max()}]")
        d = self._check_dim(xa.shape[1])
        self.mean_ = xa[p[:, 0]].mean(0)
        diff = xa[p[:, 0]] - xa[p[:, 1]]
        inv_chol = np.linalg.inv(_cholesky(diff.T @ diff / diff.shape[0]))
        whitened = (xa - self.mean_) @ inv_chol.T
        _, vectors = _eig_desc(whitened.T @ whitened)
        self.projection_ = (vectors.T @ inv_chol)[:d].T
        return self


WHITENINGS = ("none", "pca", "learned")
# the whitening a run fitted at its last evaluation, in its run folder
WHITENING_FILE = "whitening.npz"


def label_pairs(labels: ArrayLike) -> np.ndarray:
    """(P, 2) index pairs of matching items: each item with the first item of its label (labels < 0 skipped)."""
    first: dict = {}
    pairs = []
    for i, y in enumerate(np.asarray(labels).tolist()):
        if y < 0:
            continue
        if y in first:
            pairs.append((first[y], i))
        else:
            first[y] = i
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def fit_whitening(kind: str, x: ArrayLike, labels: ArrayLike, dim: Optional[int] = None) -> Optional[_Whitening]:
    """A whitening fitted on (N, D) descriptors: "pca", "learned" (from ``label_pairs``) or "none" (None)."""
    if kind not in WHITENINGS:
        raise ValueError(f"whitening must be one of {WHITENINGS}, got '{kind}'")
    if kind == "none":
        return None
    if kind == "pca":
        return PCAWhitening(dim).fit(x)
    pairs = label_pairs(labels)
    if len(pairs) == 0:
        raise ValueError("learned whitening needs matching pairs: no label has two or more items")
    return LearnedWhitening(dim).fit(x, pairs)


def save_whitening(whitening: _Whitening, path: str | os.PathLike) -> None:
    """Write a fitted whitening (mean (D,), projection (D, d), normalize) to ``path`` (.npz), atomically."""
    with atomic_write(path) as f:
        np.savez(f, mean=whitening.mean_, projection=whitening.projection_, normalize=whitening.normalize)


def load_whitening(path: str | os.PathLike) -> _Whitening:
    """The whitening ``save_whitening`` wrote to ``path``; its ``transform`` gives the same outputs."""
    with np.load(path) as z:
        w = _Whitening()
        w.mean_, w.projection_, w.normalize, w.dim = z["mean"], z["projection"], bool(z["normalize"]), None
    return w

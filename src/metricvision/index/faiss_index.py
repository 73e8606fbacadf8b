"""FaissIndex: any faiss index built from a factory string ("HNSW32", "IVF1024,PQ32", ...).

faiss is optional (the "faiss" extra) and imported only when a FaissIndex is built or loaded.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, Tuple

import numpy as np

from metricvision._atomic import atomic_write
from metricvision.index.base import INDEXES, ArrayLike, as_float32, as_ids
from metricvision.index.filtered import overfetch_search

METRICS = ("ip", "l2")


def import_faiss() -> ModuleType:
    """The faiss module, or an ImportError that says how to install it."""
    try:
        import faiss
    except ImportError as e:
        raise ImportError("FaissIndex needs faiss: pip install -e '.[faiss]' (faiss-cpu)") from e
    return faiss


@INDEXES.register("faiss")
class FaissIndex:
    """A faiss index with external int64 ids, incremental add, remove, save and load.

    Indexes without their own ids are wrapped in IndexIDMap2; IVF indexes keep ids
    themselves. IVF / PQ indexes train on the first ``add`` (a random sample of at most
    ``train_size`` vectors) unless ``train`` was called. Indexes that cannot delete
    (HNSW) hide removed ids at search time instead.

    Args:
        dim: vector dimension D.
        spec: faiss index_factory string, e.g. "Flat", "HNSW32", "IVF1024,PQ32".
        metric: "ip" (inner product) or "l2" (scores are minus squared distances).
        params: faiss ParameterSpace string applied after building, e.g. "nprobe=16,efSearch=64".
        train_size: at most this many vectors are used for training.
        seed: seed of the training sample.
    """

    def __init__(
        self,
        dim: int,
        spec: str = "HNSW32",
        metric: str = "ip",
        params: Optional[str] = None,
        train_size: int = 65536,
        seed: int = 0,
    ) -> None:
        faiss = import_faiss()
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got '{metric}'")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if train_size < 1:
            raise ValueError(f"train_size must be >= 1, got {train_size}")
        self.dim, self.spec, self.metric = dim, spec, metric
        self.params, self.train_size, self.seed = params, train_size, seed
        metric_type = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        try:
            base = faiss.index_factory(dim, spec, metric_type)
        except RuntimeError as e:
            raise ValueError(f"invalid faiss index spec '{spec}' (e.g. 'Flat', 'HNSW32', 'IVF1024,PQ32'): {e}") from e
        self._index = base if faiss.try_extract_index_ivf(base) is not None else faiss.IndexIDMap2(base)
        self._base = base  # the wrapper does not own it: keep it alive
        self._removed = np.empty(0, dtype=np.int64)  # ids hidden at search time (index cannot delete)
        self._apply_params()

    def _apply_params(self) -> None:
        if self.params:
            try:
                import_faiss().ParameterSpace().set_index_parameters(self._index, self.params)
            except RuntimeError as e:
                raise ValueError(f"invalid params '{self.params}' for index '{self.spec}': {e}") from e

    def __len__(self) -> int:
        return int(self._index.ntotal) - int(self._removed.size)

    @property
    def is_trained(self) -> bool:
        """Whether the index is ready for ``add``."""
        return bool(self._index.is_trained)

    def train(self, x: ArrayLike) -> None:
        """Train on (N, D) vectors (a random sample of at most ``train_size`` of them)."""
        xa = as_float32(x, self.dim)
        if xa.shape[0] > self.train_size:
            pick = np.random.default_rng(self.seed).choice(xa.shape[0], self.train_size, replace=False)
            xa = xa[np.sort(pick)]
        try:
            self._index.train(xa)
        except RuntimeError as e:
            raise ValueError(f"training '{self.spec}' on {xa.shape[0]} vectors failed (too few?): {e}") from e

    def add(self, x: ArrayLike, ids: Optional[ArrayLike] = None) -> None:
        """Add (N, D) vectors with optional (N,) int64 ids; trains first if needed."""
        xa = as_float32(x, self.dim)
        ia = as_ids(ids, xa.shape[0], int(self._index.ntotal))
        if self._removed.size and np.isin(ia, self._removed).any():
            bad = ia[np.isin(ia, self._removed)][:5].tolist()
            raise ValueError(f"ids {bad} were removed from '{self.spec}', which cannot delete; use new ids")
        if xa.shape[0] == 0:
            return
        if not self.is_trained:
            self.train(xa)
        self._index.add_with_ids(xa, ia)

    def remove(self, ids: ArrayLike) -> int:
        """Remove vectors whose id is in ``ids``; returns how many were removed."""
        faiss = import_faiss()
        drop = np.unique(as_ids(ids, len(np.asarray(ids).reshape(-1)), 0))
        try:
            return int(self._index.remove_ids(faiss.IDSelectorBatch(drop)))
        except RuntimeError:  # e.g. HNSW: hide the ids instead
            present = faiss.vector_to_array(self._index.id_map)
            hidden = np.setdiff1d(drop[np.isin(drop, present)], self._removed)
            self._removed = np.union1d(self._removed, hidden)
            return int(hidden.size)

    def _raw_search(self, q: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        distances, ids = self._index.search(q, k)
        scores = -distances if self.metric == "l2" else distances
        scores = scores.astype(np.float32, copy=False)
        scores[ids < 0] = -np.inf
        return scores, ids.astype(np.int64, copy=False)

    def search(self, q: ArrayLike, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k of (Q, D) queries -> (scores (Q, k) float32, ids (Q, k) int64), -inf / -1 padded."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        qa = as_float32(q, self.dim, "queries")
        if not self.is_trained or self._index.ntotal == 0:
            return np.full((qa.shape[0], k), -np.inf, np.float32), np.full((qa.shape[0], k), -1, np.int64)
        if self._removed.size:
            removed = self._removed
            return overfetch_search(self._raw_search, qa, k, lambda i: ~np.isin(i, removed), int(self._index.ntotal))
        return self._raw_search(qa, k)

    def search_allowed(self, q: ArrayLike, k: int, allowed: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k of (Q, D) queries among (n,) allowed ids, filtered inside the faiss search (an ID selector).

        Returns:
            (scores (Q, k) float32, ids (Q, k) int64), -inf / -1 padded.
        """
        faiss = import_faiss()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        qa = as_float32(q, self.dim, "queries")
        keep = np.setdiff1d(np.asarray(allowed, dtype=np.int64), self._removed)
        if not self.is_trained or self._index.ntotal == 0 or keep.size == 0:
            return np.full((qa.shape[0], k), -np.inf, np.float32), np.full((qa.shape[0], k), -1, np.int64)
        selector = faiss.IDSelectorBatch(keep)
        ivf = faiss.try_extract_index_ivf(self._index)
        if ivf is not None:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)
        elif "HNSW" in self.spec:
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=faiss.downcast_index(self._index.index).hnsw.efSearch)
        else:
            params = faiss.SearchParameters(sel=selector)
        # faiss.contrib.torch_utils (imported by e.g. pytorch-metric-learning) replaces ``search`` with
        # a torch-aware wrapper that drops ``params``; the numpy method it keeps takes them
        search = getattr(self._index, "search_numpy", self._index.search)
        distances, ids = search(qa, k, params=params)
        scores = (-distances if self.metric == "l2" else distances).astype(np.float32, copy=False)
        scores[ids < 0] = -np.inf
        return scores, ids.astype(np.int64, copy=False)

    def _config(self) -> dict[str, Any]:
        return {"dim": self.dim, "spec": self.spec, "metric": self.metric, "params": self.params,
                "train_size": self.train_size, "seed": self.seed}

    def save(self, path: str | os.PathLike) -> None:
        """Write to ``path`` (one .npz file) under a temporary name, then rename."""
        data = import_faiss().serialize_index(self._index)
        with atomic_write(path) as f:
            np.savez(f, index=data, removed=self._removed, meta=json.dumps(self._config()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FaissIndex":
        """Read an index written by ``save``."""
        if not Path(path).exists():
            raise FileNotFoundError(f"index file {path} not found")
        with np.load(path) as z:
            index = cls(**json.loads(str(z["meta"])))
            index._index = import_faiss().deserialize_index(z["index"])
            index._base = None
            index._removed = z["removed"].astype(np.int64)
        index._apply_params()
        return index

"""FlatIndex: exact search in torch, chunked so that no (Q, N) matrix is ever held whole."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from metricvision.index.base import INDEXES, ArrayLike, as_float32, as_ids

METRICS = ("ip", "l2")


@INDEXES.register("flat")
class FlatIndex:
    """Exact k-NN; the reference every other index is tested against.

    Args:
        dim: vector dimension D.
        metric: "ip" (inner product; cosine on normalized vectors) or "l2" (scores are
            minus squared distances, so larger is better for both).
        query_chunk: queries scored at once.
        db_chunk: database vectors scored at once.
    """

    def __init__(self, dim: int, metric: str = "ip", query_chunk: int = 4096, db_chunk: int = 262144) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got '{metric}'")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim, self.metric = dim, metric
        self.query_chunk, self.db_chunk = query_chunk, db_chunk
        self._x = torch.empty(0, dim)
        self._ids = torch.empty(0, dtype=torch.int64)

    def __len__(self) -> int:
        return int(self._x.shape[0])

    @property
    def ids(self) -> np.ndarray:
        """(N,) stored ids."""
        return self._ids.numpy()

    def add(self, x: ArrayLike, ids: Optional[ArrayLike] = None) -> None:
        """Append (N, D) vectors with optional (N,) ids."""
        xa = as_float32(x, self.dim)
        ia = as_ids(ids, xa.shape[0], len(self))
        self._x = torch.cat([self._x, torch.from_numpy(xa)])
        self._ids = torch.cat([self._ids, torch.from_numpy(ia)])

    def remove(self, ids: ArrayLike) -> int:
        """Remove vectors whose id is in ``ids``; returns how many were removed."""
        drop = torch.from_numpy(as_ids(ids, len(np.asarray(ids).reshape(-1)), 0))
        keep = ~torch.isin(self._ids, drop)
        removed = int((~keep).sum())
        self._x, self._ids = self._x[keep], self._ids[keep]
        return removed

    def _scores(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = q @ x.T
        if self.metric == "l2":
            s = 2 * s - (q * q).sum(1, keepdim=True) - (x * x).sum(1)[None]
        return s

    def search(self, q: ArrayLike, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k of (Q, D) queries -> (scores (Q, k), ids (Q, k)); missing entries are -1 / -inf."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        qa = torch.from_numpy(as_float32(q, self.dim, "queries"))
        nq, n = qa.shape[0], len(self)
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        ids = np.full((nq, k), -1, dtype=np.int64)
        kk = min(k, n)
        if kk == 0 or nq == 0:
            return scores, ids
        for qs in range(0, nq, self.query_chunk):
            qc = qa[qs : qs + self.query_chunk]
            best_s = torch.full((qc.shape[0], 0), -float("inf"))
            best_i = torch.empty((qc.shape[0], 0), dtype=torch.int64)
            for ds in range(0, n, self.db_chunk):
                s = self._scores(qc, self._x[ds : ds + self.db_chunk])
                top_s, top_i = s.topk(min(kk, s.shape[1]), dim=1)
                best_s = torch.cat([best_s, top_s], 1)
                best_i = torch.cat([best_i, top_i + ds], 1)
                if best_s.shape[1] > kk:
                    best_s, order = best_s.topk(kk, dim=1)
                    best_i = best_i.gather(1, order)
            scores[qs : qs + qc.shape[0], :kk] = best_s.numpy()
            ids[qs : qs + qc.shape[0], :kk] = self._ids[best_i].numpy()
        return scores, ids

    def save(self, path: str | os.PathLike) -> None:
        """Write to ``path`` (a .npz file) under a temporary name, then rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x=self._x.numpy(), ids=self._ids.numpy(), meta=json.dumps({"dim": self.dim, "metric": self.metric}))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FlatIndex":
        """Read an index written by ``save``."""
        if not Path(path).exists():
            raise FileNotFoundError(f"index file {path} not found")
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            index = cls(meta["dim"], meta["metric"])
            index.add(z["x"], z["ids"])
        return index

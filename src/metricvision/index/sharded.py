"""Sharded indexes: search shards in parallel (local or Ray actors) and merge their top-k;
build one faiss IVF index from shards filled separately (merged in memory or on disk).

Ray and faiss are optional and imported only where used.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from metricvision.index.base import INDEXES, ArrayLike, Index, as_float32, as_ids

Result = Tuple[np.ndarray, np.ndarray]


def merge_topk(results: Sequence[Result], k: int) -> Result:
    """Merge per-shard top-k lists into one top-k.

    Args:
        results: per shard, (scores (Q, k_s), ids (Q, k_s)), -inf / -1 padded.
        k: how many to keep.

    Returns:
        (scores (Q, k) float32, ids (Q, k) int64), best first; ties keep shard order.
    """
    if not results:
        raise ValueError("merge_topk needs at least one shard result")
    scores = np.concatenate([np.asarray(s, np.float32) for s, _ in results], axis=1)
    ids = np.concatenate([np.asarray(i, np.int64) for _, i in results], axis=1)
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_s, top_i = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    if top_s.shape[1] < k:
        pad = k - top_s.shape[1]
        top_s = np.pad(top_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        top_i = np.pad(top_i, ((0, 0), (0, pad)), constant_values=-1)
    return top_s, top_i


class _Shard:
    """One shard: an index built by ``create_index`` (runs in-process or as a Ray actor)."""

    def __init__(self, spec: str, dim: int, metric: str, params: Optional[str]) -> None:
        from metricvision.index.factory import create_index

        self.index: Index = create_index(spec, dim, metric, params)

    def add(self, x: np.ndarray, ids: np.ndarray) -> int:
        self.index.add(x, ids)
        return len(self.index)

    def search(self, q: np.ndarray, k: int) -> Result:
        return self.index.search(q, k)

    def size(self) -> int:
        return len(self.index)


@INDEXES.register("sharded")
class ShardedIndex:
    """An index split over shards that are searched in parallel; their top-k are merged.

    Vectors go to shards round-robin by insertion position. With ``use_ray`` each shard
    lives in a Ray actor (in this process's Ray cluster; call ``ray.init`` first, or one
    is started locally), so shards can sit on several machines. Exact shards ("Flat")
    give exactly the results of one exact index.

    Args:
        dim: vector dimension D.
        num_shards: number of shards.
        spec: index spec of every shard (see ``create_index``): "Flat", "HNSW32", ...
        metric: "ip" or "l2".
        params: faiss parameters of every shard.
        use_ray: put shards in Ray actors.
        num_cpus: CPUs each actor reserves (fractional, so two shards fit on one core).
    """

    def __init__(
        self,
        dim: int,
        num_shards: int = 2,
        spec: str = "Flat",
        metric: str = "ip",
        params: Optional[str] = None,
        use_ray: bool = False,
        num_cpus: float = 0.5,
    ) -> None:
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        if num_cpus <= 0:
            raise ValueError(f"num_cpus must be > 0, got {num_cpus}")
        self.dim, self.num_shards, self.spec, self.metric = dim, num_shards, spec, metric
        self.use_ray = use_ray
        self._count = 0
        if use_ray:
            import ray

            if not ray.is_initialized():
                ray.init()
            actor = ray.remote(num_cpus=num_cpus)(_Shard)
            self._shards: List[Any] = [actor.remote(spec, dim, metric, params) for _ in range(num_shards)]
        else:
            self._shards = [_Shard(spec, dim, metric, params) for _ in range(num_shards)]

    def _call(self, method: str, args_per_shard: Sequence[tuple]) -> list:
        if not self.use_ray:
            return [getattr(s, method)(*a) for s, a in zip(self._shards, args_per_shard)]
        import ray

        return ray.get([getattr(s, method).remote(*a) for s, a in zip(self._shards, args_per_shard)])

    def __len__(self) -> int:
        return self._count

    def add(self, x: ArrayLike, ids: Optional[ArrayLike] = None) -> None:
        """Add (N, D) vectors with optional (N,) ids, spread round-robin over the shards."""
        xa = as_float32(x, self.dim)
        ia = as_ids(ids, xa.shape[0], self._count)
        shard_of = (self._count + np.arange(xa.shape[0])) % self.num_shards
        self._call("add", [(xa[shard_of == s], ia[shard_of == s]) for s in range(self.num_shards)])
        self._count += xa.shape[0]

    def search(self, q: ArrayLike, k: int) -> Result:
        """Top-k of (Q, D) queries over all shards -> (scores (Q, k), ids (Q, k))."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        qa = as_float32(q, self.dim, "queries")
        if self.use_ray:
            import ray

            qa = ray.put(qa)  # one copy in the object store, read by every actor
        return merge_topk(self._call("search", [(qa, k)] * self.num_shards), k)

    def shard_sizes(self) -> List[int]:
        """Number of vectors in each shard."""
        return self._call("size", [()] * self.num_shards)


def _faiss_ivf(index: Any) -> Any:
    """The raw faiss index inside a FaissIndex (merging needs faiss's own objects)."""
    return index._index


def build_ivf_from_shards(
    shards: Sequence[Tuple[ArrayLike, ArrayLike]],
    train_x: ArrayLike,
    spec: str = "IVF64,Flat",
    metric: str = "ip",
    out_dir: Optional[str | os.PathLike] = None,
    on_disk: bool = False,
    seed: int = 0,
) -> Any:
    """One IVF index from shards filled separately with the same trained quantizer.

    Training happens once on ``train_x``; each shard (vectors, ids) is added to its own
    copy of the trained index (independently: on other machines, in Ray tasks) and the
    inverted lists are merged: in memory with ``merge_from``, or with ``on_disk`` by
    faiss.contrib.ondisk.merge_ondisk into ``out_dir/merged.ivfdata`` (so the lists
    need not fit in RAM). The result equals an index built from all vectors at once.

    Args:
        shards: per shard, ((N_s, D) vectors, (N_s,) int64 ids).
        train_x: (N_train, D) training vectors.
        spec: a faiss IVF spec, e.g. "IVF1024,Flat", "IVF1024,PQ32".
        metric: "ip" or "l2".
        out_dir: where shard files and (with ``on_disk``) the merged lists are written.
        on_disk: merge on disk (needs ``out_dir``).

    Returns:
        a FaissIndex holding every shard's vectors.
    """
    from metricvision.index.faiss_index import FaissIndex, import_faiss

    faiss = import_faiss()
    if not shards:
        raise ValueError("build_ivf_from_shards needs at least one shard")
    if on_disk and out_dir is None:
        raise ValueError("on_disk merging needs out_dir")
    train = as_float32(train_x, name="train_x")
    trained = FaissIndex(train.shape[1], spec, metric, seed=seed)
    if faiss.try_extract_index_ivf(_faiss_ivf(trained)) is None:
        raise ValueError(f"spec '{spec}' is not an IVF index (e.g. 'IVF1024,Flat')")
    trained.train(train)
    blob = faiss.serialize_index(_faiss_ivf(trained))
    filled = []
    for x, ids in shards:
        shard = faiss.deserialize_index(blob)
        xa = as_float32(x, train.shape[1])
        shard.add_with_ids(xa, as_ids(ids, xa.shape[0], 0))
        filled.append(shard)
    merged = faiss.deserialize_index(blob)
    if not on_disk:
        for shard in filled:
            merged.merge_from(shard, 0)
    else:
        from faiss.contrib.ondisk import merge_ondisk

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        names = []
        for i, shard in enumerate(filled):
            names.append(str(out / f"shard_{i:04d}.faiss"))
            tmp = names[-1] + ".tmp"
            faiss.write_index(shard, tmp)
            os.replace(tmp, names[-1])
        merge_ondisk(merged, names, str(out / "merged.ivfdata"))
    trained._index = merged
    return trained

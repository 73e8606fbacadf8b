"""create_index: one factory string for every index ("Flat" exact in torch, anything else faiss)."""
from __future__ import annotations

from typing import Optional

from metricvision.index.base import Index
from metricvision.index.faiss_index import FaissIndex
from metricvision.index.flat import FlatIndex


def create_index(spec: str, dim: int, metric: str = "ip", params: Optional[str] = None) -> Index:
    """Build an empty index.

    Args:
        spec: "Flat" / "flat" for the exact torch FlatIndex; any other faiss index_factory
            string ("HNSW32", "IVF1024,Flat", "IVF1024,PQ32", "faiss:Flat" for faiss's own
            flat index) for a FaissIndex.
        dim: vector dimension D.
        metric: "ip" or "l2".
        params: faiss ParameterSpace string such as "nprobe=16" (faiss indexes only).

    Returns:
        An Index.
    """
    if spec.lower() == "flat":
        if params:
            raise ValueError(f"params '{params}' apply to faiss indexes only, not to spec '{spec}'")
        return FlatIndex(dim, metric)
    return FaissIndex(dim, spec.removeprefix("faiss:"), metric, params)

"""Indexes for k-NN search: the Index protocol and the exact FlatIndex."""
from metricvision.index.base import INDEXES, Index
from metricvision.index.flat import FlatIndex
from metricvision.index.faiss_index import FaissIndex
from metricvision.index.factory import create_index
from metricvision.index.filtered import column_filter, filtered_search
from metricvision.index.store import IndexStore

__all__ = ["INDEXES", "Index", "FlatIndex"]
__all__ += ["FaissIndex", "IndexStore", "column_filter", "create_index", "filtered_search"]

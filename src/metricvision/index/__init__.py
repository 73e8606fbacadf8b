"""Indexes for k-NN search: the Index protocol and the exact FlatIndex."""
from metricvision.index.base import INDEXES, Index
from metricvision.index.flat import FlatIndex
from metricvision.index.faiss_index import FaissIndex
from metricvision.index.factory import create_index
from metricvision.index.filtered import column_filter, filtered_search
from metricvision.index.store import IndexStore
from metricvision.index.kreciprocal import k_reciprocal_distances, k_reciprocal_search
from metricvision.index.rerank import Diffusion, alpha_qe_search, alpha_query_expansion
from metricvision.index.whitening import LearnedWhitening, PCAWhitening

__all__ = ["INDEXES", "Index", "FlatIndex"]
__all__ += ["FaissIndex", "IndexStore", "column_filter", "create_index", "filtered_search"]
__all__ += ["Diffusion", "LearnedWhitening", "PCAWhitening", "alpha_qe_search", "alpha_query_expansion",
            "k_reciprocal_distances", "k_reciprocal_search"]

"""Indexes for k-NN search: the Index protocol and the exact FlatIndex."""
from metricvision.index.base import INDEXES, Index
from metricvision.index.flat import FlatIndex

__all__ = ["INDEXES", "Index", "FlatIndex"]

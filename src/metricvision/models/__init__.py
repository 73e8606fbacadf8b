"""Backbones, pooling, heads and the Embedder."""
from metricvision.models.backbones import BACKBONES, create_backbone
from metricvision.models.embedder import Embedder
from metricvision.models.pooling import POOLINGS, GeM
from metricvision.models.weights import WeightsNotFound, resolve_state_dict

__all__ = ["BACKBONES", "POOLINGS", "Embedder", "GeM", "WeightsNotFound", "create_backbone", "resolve_state_dict"]

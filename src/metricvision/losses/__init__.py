"""Losses over a similarity matrix; ``create_loss(name, **kwargs)`` builds one.

Families (the references decide): classification.py (class weights), proxies.py
(proxies), pairs.py (the batch, a memory, another modality), ranking.py (rows of S),
xbm.py (any loss with a cross-batch memory); the task losses: bnneck.py (re-ID),
hardnet.py (patches), tuples.py (landmarks). Every loss takes ``miner=`` (see
metricvision.miners).
"""
from typing import Any

from metricvision.losses import classification, pairs, proxies, ranking, xbm  # noqa: F401  (registration)
from metricvision.losses import distillation  # noqa: F401  (registration)
from metricvision.losses import meta_embedding  # noqa: F401  (registration: OLTR meta-embedding)
from metricvision.losses import bnneck, hardnet, tuples  # noqa: F401  (registration: re-ID, patches, landmarks)
from metricvision.losses.base import LOSSES, LossOutput, MetricLoss, ProxyLoss, zero_loss
from metricvision.miners import MINERS, Miner, create_miner


def create_loss(name: str, **kwargs: Any) -> MetricLoss:
    """Build the loss registered as ``name``; ``miner`` may be a Miner or a miner name."""
    return LOSSES.create(name, **kwargs)


__all__ = [
    "LOSSES", "LossOutput", "MINERS", "MetricLoss", "Miner", "ProxyLoss", "create_loss", "create_miner", "zero_loss",
]

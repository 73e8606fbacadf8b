"""Losses over a similarity matrix; ``create_loss(name, **kwargs)`` builds one."""
from typing import Any

from metricvision.losses import pairs, proxies  # noqa: F401  (registration)
from metricvision.losses import distillation  # noqa: F401  (registration)
from metricvision.losses.base import LOSSES, LossOutput, MetricLoss, ProxyLoss, zero_loss


def create_loss(name: str, **kwargs: Any) -> MetricLoss:
    """Build the loss registered as ``name``."""
    return LOSSES.create(name, **kwargs)


__all__ = ["LOSSES", "LossOutput", "MetricLoss", "ProxyLoss", "create_loss", "zero_loss"]

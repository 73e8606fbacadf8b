"""Pooling of (N, C, H, W) feature maps into (N, C) vectors."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metricvision._registry import Registry

POOLINGS: Registry[nn.Module] = Registry("pooling")


@POOLINGS.register("avg")
class AvgPool(nn.Module):
    """Global average pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C)."""
        return x.mean(dim=(2, 3))


@POOLINGS.register("max")
class MaxPool(nn.Module):
    """Global max pooling (MAC)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C)."""
        return x.amax(dim=(2, 3))


@POOLINGS.register("gem")
class GeM(nn.Module):
    """Generalized mean pooling (Radenovic et al., TPAMI 2018): (mean x^p)^(1/p).

    Args:
        p: initial exponent (> 0); p=1 is average, p -> inf is max pooling.
        learnable: learn p.
        eps: clamp for positivity.
    """

    def __init__(self, p: float = 3.0, learnable: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"p must be > 0, got {p}")
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learnable)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C)."""
        return F.avg_pool2d(x.clamp(min=self.eps).pow(self.p), x.shape[-2:]).pow(1.0 / self.p).flatten(1)

"""Pooling of (N, C, H, W) feature maps into (N, C) vectors."""
from __future__ import annotations

import inspect

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


@POOLINGS.register("modulated_attention")
class ModulatedAttention(nn.Module):
    """OLTR's modulated attention (Liu et al., CVPR 2019) on the maps, then GeM pooling.

    f + A(f) * W_mask SA(f): SA is an embedded-Gaussian self-attention over the locations (non-local block,
    ``channels // reduction`` inner channels), A a softmax over the locations (spatial attention) that
    modulates it, W_mask a 1 x 1 convolution initialised to zero, so the block starts as the identity.
    Simplified: A comes from a 1 x 1 convolution of f (OLTR: a linear layer on the whole flattened 7 x 7
    map), so that any map size works.

    Args:
        channels: C of the (N, C, H, W) maps.
        reduction: inner channels = channels // reduction.
        p: GeM exponent (learned).
    """

    def __init__(self, channels: int, reduction: int = 2, p: float = 3.0) -> None:
        super().__init__()
        if channels < 1 or not 1 <= reduction <= channels:
            raise ValueError(f"channels must be >= 1 and reduction in [1, channels], got {channels}, {reduction}")
        inner = channels // reduction
        self.theta, self.phi, self.g = (nn.Conv2d(channels, inner, 1) for _ in range(3))
        self.mask = nn.Conv2d(inner, channels, 1, bias=False)
        nn.init.zeros_(self.mask.weight)
        self.spatial = nn.Conv2d(channels, 1, 1)
        self.gem = GeM(p)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W) modulated maps."""
        n, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (N, HW, I)
        weights = torch.softmax(theta @ self.phi(x).flatten(2), dim=-1)  # (N, HW, HW)
        sa = (weights @ self.g(x).flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, -1, h, w)
        where = torch.softmax(self.spatial(x).flatten(1), dim=1).view(n, 1, h, w)
        return x + where * self.mask(sa)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C)."""
        return self.gem(self.attend(x))


def create_pooling(name: str, channels: int) -> nn.Module:
    """The POOLINGS entry ``name``; one with learned layers on the maps (a ``channels`` argument) gets C."""
    takes_channels = "channels" in inspect.signature(POOLINGS.get(name)).parameters
    return POOLINGS.create(name, channels=channels) if takes_channels else POOLINGS.create(name)

"""L2-Net / HardNet patch descriptor network (32 x 32 grey patches -> 128-d)."""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

# ITU-R 601 luma weights, as PIL's "L" mode
_LUMA = (0.299, 0.587, 0.114)


class PatchStandardize(nn.Module):
    """(N, 3, H, W) RGB or (N, 1, H, W) grey -> (N, 1, H, W) grey, zero mean and unit std per patch."""

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("luma", torch.tensor(_LUMA).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) with C in (1, 3) -> (N, 1, H, W)."""
        if x.shape[1] == 3:
            x = (x * self.luma.to(x.dtype)).sum(dim=1, keepdim=True)
        elif x.shape[1] != 1:
            raise ValueError(f"patches must have 1 or 3 channels, got {x.shape[1]}")
        flat = x.flatten(1)
        mean = flat.mean(dim=1).view(-1, 1, 1, 1)
        std = flat.std(dim=1).view(-1, 1, 1, 1)
        return (x - mean) / (std + self.eps)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> List[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout, affine=False), nn.ReLU()]


def l2net(dropout: float = 0.3) -> Tuple[nn.Module, int]:
    """The L2-Net architecture (Tian et al., CVPR 2017) as trained by HardNet (Mishchuk et al., NeurIPS 2017).

    Seven convolutions (32, 32, 64/2, 64, 128/2, 128, then 8 x 8 to 128) with batch norm
    without affine parameters, dropout before the last one, on per-patch standardized grey
    input. A 32 x 32 patch gives a (N, 128, 1, 1) map; the Embedder L2-normalizes it.

    Returns:
        (module, 128).
    """
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    layers: List[nn.Module] = [PatchStandardize()]
    layers += _conv_bn_relu(1, 32) + _conv_bn_relu(32, 32) + _conv_bn_relu(32, 64, 2) + _conv_bn_relu(64, 64)
    layers += _conv_bn_relu(64, 128, 2) + _conv_bn_relu(128, 128)
    layers += [nn.Dropout(dropout), nn.Conv2d(128, 128, 8, bias=False), nn.BatchNorm2d(128, affine=False)]
    net = nn.Sequential(*layers)
    net.input_mean, net.input_std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # standardized per patch instead
    return net, 128

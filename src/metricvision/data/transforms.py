"""Image transforms: PIL image -> float tensor (3, H, W) in [0, 1]."""
from __future__ import annotations

from typing import Callable

import torch
from PIL import Image
from torchvision.transforms import v2

from metricvision._registry import Registry

Transform = Callable[[Image.Image], torch.Tensor]
TRANSFORMS: Registry[Transform] = Registry("transform")


@TRANSFORMS.register("eval")
def eval_transform(size: int = 48) -> Transform:
    """Resize to size x size."""
    return v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True)])


@TRANSFORMS.register("train")
def train_transform(size: int = 48, scale_min: float = 0.6, jitter: float = 0.3) -> Transform:
    """Random resized crop, colour jitter, slight rotation; no flips (emoji and text are chiral)."""
    if not 0 < scale_min <= 1:
        raise ValueError(f"scale_min must be in (0, 1], got {scale_min}")
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop((size, size), scale=(scale_min, 1.0), ratio=(0.8, 1.25), antialias=True),
        v2.RandomApply([v2.RandomRotation(10, fill=255)], p=0.3),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomApply([v2.ColorJitter(jitter, jitter, jitter, 0.05)], p=0.8),
        v2.RandomGrayscale(0.1),
    ])

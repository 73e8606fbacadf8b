"""Image transforms: PIL image -> float tensor (3, H, W) in [0, 1].

Each is registered by name and built with ``size`` (an int for H = W, or (H, W)) and its
own keyword options (a recipe's ``data.train_transform_params``). Normalization happens in
the Embedder, with the backbone's statistics.
"""
from __future__ import annotations

from typing import Callable, Sequence, Tuple, Union

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import v2

from metricvision._registry import Registry

Transform = Callable[[Image.Image], torch.Tensor]
TRANSFORMS: Registry[Transform] = Registry("transform")
Size = Union[int, Sequence[int]]
# ImageNet's mean colour: erased areas become 0 after the Embedder's normalization
IMAGENET_MEAN_COLOUR = [0.485, 0.456, 0.406]


def height_width(size: Size) -> Tuple[int, int]:
    """(H, W) from an int or a pair of positive ints."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, int) and v > 0 for v in hw):
        raise ValueError(f"size must be a positive int or [height, width], got {size!r}")
    return hw[0], hw[1]


@TRANSFORMS.register("eval")
def eval_transform(size: Size = 48) -> Transform:
    """Resize to (H, W)."""
    return v2.Compose([v2.ToImage(), v2.Resize(height_width(size), antialias=True), v2.ToDtype(torch.float32, scale=True)])


def _check_probability(name: str, p: float) -> None:
    if not 0 <= p <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {p}")


@TRANSFORMS.register("train")
def train_transform(size: Size = 48, scale_min: float = 0.6, jitter: float = 0.3) -> Transform:
    """Colour jitter and random greyscale on the source image, then random resized crop and slight rotation.

    No flips (emoji and text are chiral). The colour operations run on the PIL source image, before
    the crop upsamples it (40 px emoji -> 72 px), and every step is one PIL call: 2-3x cheaper than the
    same steps on float tensors after the crop, so that data loading stays a small part of a step on
    2 cores (benchmarks/train_throughput.py).
    """
    if not 0 < scale_min <= 1:
        raise ValueError(f"scale_min must be in (0, 1], got {scale_min}")
    return T.Compose([
        T.RandomApply([T.ColorJitter(jitter, jitter, jitter, 0.05)], p=0.8),
        T.RandomGrayscale(0.1),
        T.RandomResizedCrop(height_width(size), scale=(scale_min, 1.0), ratio=(0.8, 1.25)),
        T.RandomApply([T.RandomRotation(10, fill=255)], p=0.3),
        T.PILToTensor(),
        T.ConvertImageDtype(torch.float32),
    ])


@TRANSFORMS.register("reid")
def reid_transform(size: Size = (256, 128), flip: float = 0.5, pad: int = 10, erasing: float = 0.5) -> Transform:
    """The re-ID "bag of tricks" augmentation (Luo et al. 2019): resize, flip, pad + random crop, random erasing.

    Erased rectangles (2-40 % of the area, aspect 0.3-3.3) take ImageNet's mean colour.
    """
    _check_probability("flip", flip)
    _check_probability("erasing", erasing)
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    hw = height_width(size)
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(hw, antialias=True),
        v2.RandomHorizontalFlip(flip),
        v2.Pad(pad),
        v2.RandomCrop(hw),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomErasing(erasing, scale=(0.02, 0.4), ratio=(0.3, 3.3), value=IMAGENET_MEAN_COLOUR),
    ])


@TRANSFORMS.register("landmarks")
def landmarks_transform(size: Size = 362, scale_min: float = 0.5, flip: float = 0.5, jitter: float = 0.2) -> Transform:
    """Landmark training crops: random resized crop, horizontal flip, colour jitter (buildings are not chiral)."""
    if not 0 < scale_min <= 1:
        raise ValueError(f"scale_min must be in (0, 1], got {scale_min}")
    _check_probability("flip", flip)
    return v2.Compose([
        v2.RandomResizedCrop(height_width(size), scale=(scale_min, 1.0), antialias=True),
        v2.RandomHorizontalFlip(flip),
        v2.RandomApply([v2.ColorJitter(jitter, jitter, jitter)], p=0.8),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
    ])


@TRANSFORMS.register("patches")
def patches_transform(size: Size = 32, flip: float = 0.0) -> Transform:
    """Grey patches resized to (H, W) (HardNet: 64 -> 32 pixels), optionally flipped."""
    _check_probability("flip", flip)
    return v2.Compose([
        v2.ToImage(),
        v2.Grayscale(num_output_channels=3),
        v2.Resize(height_width(size), antialias=True),
        v2.RandomHorizontalFlip(flip),
        v2.ToDtype(torch.float32, scale=True),
    ])

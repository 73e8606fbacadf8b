"""Image transforms: PIL image -> tensor (3, H, W), float in [0, 1] or uint8 (scaled by ``as_float_images``).

Each is registered by name and built with ``size`` (an int for H = W, or (H, W)) and its
own keyword options (a recipe's ``data.train_transform_params``). Normalization happens in
the Embedder, with the backbone's statistics.
"""
from __future__ import annotations

from typing import Callable, Sequence, Tuple, Union

import numpy as np
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


class TrainAugment:
    """The emoji/icons/glyphs training augmentation: PIL RGB image -> uint8 tensor (3, H, W).

    With probability 0.8 colour jitter (brightness, contrast, saturation in [1 - jitter, 1 + jitter], hue in
    +- 0.05, in a random order) and with probability 0.1 greyscale, both on the source image; then a random
    resized crop (scale [scale_min, 1], aspect [0.8, 1.25]) to (H, W) and, with probability 0.3, a rotation
    of up to 10 degrees (white fill). No flips (emoji and text are chiral).

    Pixel for pixel and draw for draw the torchvision composition RandomApply(ColorJitter) ->
    RandomGrayscale -> RandomResizedCrop -> RandomApply(RandomRotation) -> PILToTensor (the random numbers
    come from torchvision's own ``get_params``, in the same order), but each step is one Pillow call,
    without the per-call dispatch of transform modules: about 2x cheaper, so that data loading stays a
    small part of a training step on 2 cores (benchmarks/train_throughput.py). The result stays uint8: the
    Trainer scales the whole batch to [0, 1] at once (``as_float_images``).
    """

    def __init__(self, size: Size = 48, scale_min: float = 0.6, jitter: float = 0.3) -> None:
        if not 0 < scale_min <= 1:
            raise ValueError(f"scale_min must be in (0, 1], got {scale_min}")
        self.size = height_width(size)
        self.scale = [scale_min, 1.0]
        self.ratio = [0.8, 1.25]
        cj = T.ColorJitter(jitter, jitter, jitter, 0.05)  # its ranges: None where a factor cannot change
        self.ranges = (cj.brightness, cj.contrast, cj.saturation, cj.hue)

    def _jitter(self, img: Image.Image) -> Image.Image:
        order, *factors = T.ColorJitter.get_params(*self.ranges)
        for op in order.tolist():
            f = factors[op]
            if f is None:
                continue
            if op == 0:  # brightness: blend with black
                img = Image.blend(Image.new("RGB", img.size, 0), img, f)
            elif op == 1:  # contrast: blend with the rounded mean grey (ImageEnhance.Contrast)
                mean = int(np.asarray(img.convert("L"), dtype=np.float64).mean() + 0.5)
                img = Image.blend(Image.new("RGB", img.size, (mean,) * 3), img, f)
            elif op == 2:  # saturation: blend with the grey image (ImageEnhance.Color)
                img = Image.blend(img.convert("L").convert("RGB"), img, f)
            else:  # hue: shift H in HSV, wrapping at 255 (torchvision's adjust_hue)
                hsv = np.array(img.convert("HSV"))
                with np.errstate(over="ignore"):
                    hsv[..., 0] += np.array(f * 255).astype(np.uint8)
                img = Image.fromarray(hsv, "HSV").convert("RGB")
        return img

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode != "RGB":
            img = img.convert("RGB")
        if not 0.8 < torch.rand(1):
            img = self._jitter(img)
        if torch.rand(1) < 0.1:
            img = img.convert("L").convert("RGB")
        top, left, h, w = T.RandomResizedCrop.get_params(img, self.scale, self.ratio)
        img = img.crop((left, top, left + w, top + h)).resize(self.size[::-1], Image.BILINEAR)
        if not 0.3 < torch.rand(1):
            img = img.rotate(T.RandomRotation.get_params([-10.0, 10.0]), Image.NEAREST, fillcolor=(255, 255, 255))
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


TRANSFORMS.register("train")(TrainAugment)


def as_float_images(x: torch.Tensor) -> torch.Tensor:
    """A batch (N, 3, H, W) as float in [0, 1]: uint8 images are divided by 255, float ones returned as they are."""
    return x.to(torch.float32).div_(255) if x.dtype == torch.uint8 else x


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

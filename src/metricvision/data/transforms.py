"""Image transforms: PIL image -> tensor (3, H, W), float in [0, 1] or uint8 (scaled by ``as_float_images``).

Each is registered by name and built with ``size`` (an int for H = W, or (H, W)) and its
own keyword options (a recipe's ``data.train_transform_params``). Normalization happens in
the Embedder, with the backbone's statistics.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, List, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import v2

from metricvision._registry import Registry
from metricvision.data.torch_draws import TORCH_DRAWS, Draws, f32, replayed_draws

Transform = Callable[[Image.Image], torch.Tensor]
TRANSFORMS: Registry[Transform] = Registry("transform")
Size = Union[int, Sequence[int]]
# ImageNet's mean colour: erased areas become 0 after the Embedder's normalization
IMAGENET_MEAN_COLOUR = [0.485, 0.456, 0.406]
_core = Image.core
_DITHER = Image.Dither.FLOYDSTEINBERG  # what Image.convert passes
_LEVELS = np.arange(256)
# torch.rand(1) compared with a Python float compares in float32
_P01, _P03, _P08 = f32(0.1), f32(0.3), f32(0.8)


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


@functools.lru_cache(maxsize=256)
def _hue_lut(shift: int) -> List[int]:
    """point() table of an HSV image whose H is shifted by ``shift`` (uint8 wrap-around), S and V kept."""
    return [(v + shift) & 255 for v in range(256)] + list(range(256)) * 2


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
    RandomGrayscale -> RandomResizedCrop -> RandomApply(RandomRotation) -> PILToTensor: the same random
    numbers from torch's generator in the same order (``torch_draws``), the same Pillow operations, but
    each one call of Pillow's core without the per-call dispatch of transform modules. ``batch`` (used by
    the dataset's batched fetch) reads a whole batch's numbers from a numpy replay of the generator: 16 ms
    for 128 emoji instead of the composition's 33 ms, so that data loading stays a small part of a
    training step on 2 cores (benchmarks/train_throughput.py). The result stays uint8: the Trainer scales
    the whole batch to [0, 1] at once (``as_float_images``).

    One departure: a source much larger than the output (shorter side over 2 max(H, W) / sqrt(0.8
    scale_min), e.g. a photograph of a ``folder`` dataset) is first reduced by the integer factor that keeps
    it above that (``Image.reduce``, a box filter), so that the colour jitter does not run on millions of
    pixels; the composition then applies to the reduced copy. Emoji, icons, glyphs and Fashion-MNIST
    images (28-48 px) are never reduced.
    """

    def __init__(self, size: Size = 48, scale_min: float = 0.6, jitter: float = 0.3) -> None:
        if not 0 < scale_min <= 1:
            raise ValueError(f"scale_min must be in (0, 1], got {scale_min}")
        self.size = height_width(size)
        self.scale = [scale_min, 1.0]
        self.log_ratio = torch.log(torch.tensor([0.8, 1.25])).tolist()  # float32, as RandomResizedCrop draws it
        # a source whose shorter side exceeds this is first reduced (its smallest crop still >= 2x the output)
        self.reduce_above = math.ceil(2 * max(self.size) / math.sqrt(scale_min * 0.8))
        cj = T.ColorJitter(jitter, jitter, jitter, 0.05)  # its ranges: None where a factor cannot change
        self.ranges = (cj.brightness, cj.contrast, cj.saturation, cj.hue)

    def _jitter(self, im: Any, draws: Draws) -> Any:
        """ColorJitter on a core image (torchvision's adjust_* on PIL images)."""
        order = draws.randperm(4)
        factors = [None if r is None else draws.uniform(r[0], r[1]) for r in self.ranges]
        for op in order:
            f = factors[op]
            if f is None:
                continue
            if op == 0:  # brightness: blend with black
                im = _core.blend(_core.fill("RGB", im.size, 0), im, f)
            elif op == 1:  # contrast: blend with the rounded mean grey (ImageEnhance.Contrast)
                mean = np.dot(im.convert("L", _DITHER).histogram(), _LEVELS) / (im.size[0] * im.size[1])
                im = _core.blend(_core.fill("RGB", im.size, (int(mean + 0.5),) * 3), im, f)
            elif op == 2:  # saturation: blend with the grey image (ImageEnhance.Color)
                im = _core.blend(im.convert("L", _DITHER).convert("RGB", _DITHER), im, f)
            else:  # hue: shift H in HSV, wrapping at 255 (torchvision's adjust_hue)
                shift = int(np.array(f * 255).astype(np.uint8))
                im = im.convert("HSV", _DITHER).point(_hue_lut(shift), None).convert("RGB", _DITHER)
        return im

    def _crop_box(self, width: int, height: int, draws: Draws) -> Tuple[int, int, int, int]:
        """(top, left, h, w): RandomResizedCrop.get_params."""
        area = height * width
        for _ in range(10):
            target_area = area * draws.uniform(*self.scale)
            aspect = torch.tensor([draws.uniform(*self.log_ratio)]).exp_().item()
            w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = draws.randint(height - h + 1)
                return top, draws.randint(width - w + 1), h, w
        ratio = width / height  # fallback: the central crop of the nearest allowed aspect
        w, h = (width, int(round(width / 0.8))) if ratio < 0.8 else (
            (int(round(height * 1.25)), height) if ratio > 1.25 else (width, height))
        return (height - h) // 2, (width - w) // 2, h, w

    def apply(self, img: Image.Image, draws: Draws) -> torch.Tensor:
        """(3, H, W) uint8 augmentation of ``img`` with the random numbers of ``draws``."""
        im = (img if img.mode == "RGB" else img.convert("RGB")).im
        factor = min(im.size) // self.reduce_above
        if factor >= 2:  # a photograph: jitter and crop a box-filtered 1/factor copy (Image.reduce)
            im = im.reduce((factor, factor), (0, 0) + im.size)
        if draws.rand() <= _P08:
            im = self._jitter(im, draws)
        if draws.rand() < _P01:
            im = im.convert("L", _DITHER).convert("RGB", _DITHER)
        top, left, h, w = self._crop_box(im.size[0], im.size[1], draws)
        im = im.crop((left, top, left + w, top + h))
        size = self.size[::-1]
        if im.size != size:
            im = im.resize(size, Image.BILINEAR, (0, 0) + im.size)
        out = Image.Image()._new(im)
        if draws.rand() <= _P03:
            out = out.rotate(draws.uniform(-10.0, 10.0), Image.NEAREST, fillcolor=(255, 255, 255))
        return torch.frombuffer(bytearray(out.tobytes()), dtype=torch.uint8).view(size[1], size[0], 3).permute(2, 0, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.apply(img, TORCH_DRAWS)

    def batch(self, images: Sequence[Image.Image]) -> List[torch.Tensor]:
        """``[self(img) for img in images]``, the random numbers read from a replay of torch's generator."""
        with replayed_draws() as draws:
            return [self.apply(img, draws) for img in images]


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


@TRANSFORMS.register("scene")
def scene_transform(size: Size = 72, **params: Any) -> Transform:
    """Proposal-like crops of the object pasted on training photographs (``data.scene_augment.SceneAugment``)."""
    from metricvision.data.scene_augment import SceneAugment

    return SceneAugment(size, **params)

"""Scene augmentation: train an identity embedding on objects as a detector's proposals show them.

The scene benchmark (``data.scenes``) pastes emoji onto photographs, small, rotated, relit,
blurred and partly hidden by their neighbours, and a two-stage localizer embeds each proposal's
square crop. ``SceneAugment`` draws such crops from a clean training image: with probability
``p`` the emoji is pasted (``scenes.paste_object``, the builder's own resize, rotation,
brightness and blur) onto a window of a training background photograph, sometimes beside a
neighbour (another recently seen training image) that may hide part of it, and the square
around its visible box, shifted and rescaled as a proposal would be, is the output; otherwise
the image goes through the plain ``TrainAugment``.
"""
from __future__ import annotations

import math
from collections import deque
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from metricvision.data.scenes import SceneConfig, background_files, generated_backgrounds, paste_object, split_backgrounds
from metricvision.data.transforms import TrainAugment, height_width


class SceneAugment:
    """PIL RGB emoji on white -> uint8 tensor (3, H, W): a proposal-like crop of it pasted on a photograph.

    Args:
        size: output size.
        backgrounds: folders of photographs; the training ones (``split_backgrounds(.., "train")``: every 4th,
            sorted, is held out for test scenes) are used. None: generated backgrounds (tests).
        p: probability of a scene crop (else the plain ``TrainAugment``).
        sides: object side range in pixels of a ``scene_size`` scene (log-uniform).
        max_rotation, blur: as ``SceneConfig``.
        neighbour: probability of pasting a neighbour (a recently seen training image) near the object.
        max_occlusion: the largest fraction of the object a neighbour may hide (else it goes behind it).
        shift, scale: proposal jitter: centre shift up to ``shift`` x the box side, side scaled by
            up to 1 +- ``scale``.
        scene_size: side the background photographs are resized to (the scenes' side).
        scale_min, jitter: the plain ``TrainAugment``'s arguments.
    """

    def __init__(self, size: Any = 72, backgrounds: Optional[Sequence[str]] = None, p: float = 0.5,
                 sides: Sequence[int] = (24, 160), max_rotation: float = 30.0, blur: float = 0.3, neighbour: float = 0.5,
                 max_occlusion: float = 0.4, shift: float = 0.1, scale: float = 0.15, scene_size: int = 512,
                 scale_min: float = 0.6, jitter: float = 0.3) -> None:
        for name, v in (("p", p), ("blur", blur), ("neighbour", neighbour), ("max_occlusion", max_occlusion)):
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if len(sides) != 2 or not 8 <= sides[0] <= sides[1] <= scene_size // 2:
            raise ValueError(f"sides must be [min, max] with 8 <= min <= max <= scene_size / 2 = {scene_size // 2}, got {sides}")
        self.size = height_width(size)
        self.plain = TrainAugment(size, scale_min=scale_min, jitter=jitter)
        self.reduce_above = self.plain.reduce_above
        self.p, self.neighbour, self.max_occlusion, self.shift, self.scale = p, neighbour, max_occlusion, shift, scale
        self.cfg = SceneConfig(size=scene_size, sides=(int(sides[0]), int(sides[1])), max_rotation=max_rotation, blur=blur)
        if backgrounds:
            if isinstance(backgrounds, str):
                backgrounds = [backgrounds]
            items: List[Any] = split_backgrounds(background_files(backgrounds), "train")
        else:
            items = split_backgrounds(generated_backgrounds(8, 128), "train")
        self.backgrounds = [np.asarray((b if isinstance(b, Image.Image) else Image.open(Path(b))).convert("RGB")
                                       .resize((scene_size, scene_size), Image.BILINEAR)) for b in items]
        self.recent: deque = deque(maxlen=64)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        rng = np.random.default_rng(seed)
        image = np.asarray(img.convert("RGB"))
        self.recent.append(image)
        if rng.random() >= self.p:
            return self.plain(img)
        out = self.scene_crop(image, rng)
        return torch.from_numpy(np.array(out)).permute(2, 0, 1)

    def scene_crop(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(h, w, 3) emoji on white -> (H, W, 3) uint8 proposal-like crop of it pasted on a background window."""
        canvas, visible, _ = self.compose(image, rng)
        ys, xs = np.nonzero(visible)
        box = self._jittered_square(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, len(canvas), rng)
        return np.asarray(Image.fromarray(canvas).resize(self.size[::-1], Image.BILINEAR, box=box))

    def compose(self, image: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(h, w, 3) emoji on white -> a background window with it pasted (win, win, 3) uint8, and its visible and
        unoccluded masks (win, win) bool; a neighbour that would hide more than ``max_occlusion`` goes behind it."""
        rgb, alpha = paste_object(image, self.cfg, rng)
        win = min(self.cfg.size, 3 * max(alpha.shape))  # room for a neighbour and for the jittered square
        bg = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        y, x = (int(v) for v in rng.integers(0, self.cfg.size - win + 1, 2))
        canvas = bg[y : y + win, x : x + win].astype(np.float32)
        layers = [_placed(np.asarray(rgb, np.float32), alpha, win, rng)]
        full = layers[0][1] >= 0.5
        visible = full
        if rng.random() < self.neighbour and len(self.recent) > 1:
            other = self.recent[int(rng.integers(len(self.recent) - 1))]
            n_rgb, n_alpha = paste_object(other, self.cfg, rng)
            layer = _placed(np.asarray(n_rgb, np.float32), n_alpha, win, rng)
            cover = layer[1] >= 0.5
            if (cover & full).sum() <= self.max_occlusion * full.sum():
                layers, visible = layers + [layer], full & ~cover
            else:
                layers = [layer] + layers
        for l_rgb, l_alpha in layers:
            canvas = l_alpha[..., None] * l_rgb + (1 - l_alpha[..., None]) * canvas
        return np.clip(canvas, 0, 255).astype(np.uint8), visible, full

    def _jittered_square(self, x0: float, y0: float, x1: float, y1: float, win: int, rng: np.random.Generator
                         ) -> Tuple[float, float, float, float]:
        """A box -> the square around it (side max(w, h)), centre shifted and side rescaled as a proposal's,
        moved inside the (win, win) canvas."""
        s = min(win, max(x1 - x0, y1 - y0) * math.exp(rng.uniform(math.log(1 - self.scale), math.log(1 + self.scale))))
        c = [(a + b) / 2 + rng.uniform(-self.shift, self.shift) * s for a, b in ((x0, x1), (y0, y1))]
        cx, cy = (min(max(v, s / 2), win - s / 2) for v in c)
        return (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)


def _placed(rgb: np.ndarray, alpha: np.ndarray, win: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """An (h, w, 3) object and its (h, w) alpha at a random place of a (win, win) canvas -> (win, win, 3), (win, win),
    cut at the canvas edge."""
    y, x = (int(rng.integers(0, max(1, win - d + 1))) for d in alpha.shape)
    h, w = min(alpha.shape[0], win - y), min(alpha.shape[1], win - x)
    out_rgb, out_alpha = np.zeros((win, win, 3), np.float32), np.zeros((win, win), np.float32)
    out_rgb[y : y + h, x : x + w], out_alpha[y : y + h, x : x + w] = rgb[:h, :w], alpha[:h, :w]
    return out_rgb, out_alpha

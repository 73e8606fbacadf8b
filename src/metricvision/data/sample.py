"""Samples and datasets: a dataset is a sequence of samples, images given by path or array."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from metricvision.data.registry import DATASETS


@dataclass
class Sample:
    """One item of a dataset.

    Attributes:
        image: a file path or an (H, W, 3) uint8 array.
        label: integer class / identity, -1 when unlabeled.
        instance_id: id of the physical instance (re-ID person, landmark), if any.
        camera: camera id (re-ID), -1 when unknown.
        caption: text attached to the image.
        bbox: (x0, y0, x1, y1) box of the object, if any.
        split: "train", "test", "query", "gallery", ... or "".
        meta: anything else (category, vendor, names).
    """

    image: Any
    label: int = -1
    instance_id: int = -1
    camera: int = -1
    caption: str = ""
    bbox: Optional[Tuple[float, float, float, float]] = None
    split: str = ""
    meta: Dict[str, Any] = field(default_factory=dict)


def load_image(image: Any, min_side: int = 0) -> Image.Image:
    """Open a path or wrap an array as an RGB PIL image; a corrupt file names its path.

    ``min_side`` > 0 lets a JPEG decode at 1/2, 1/4 or 1/8 of its size (``Image.draft``) as long as its
    shorter side stays >= ``min_side``: a photograph that a transform reduces anyway decodes several times faster.
    """
    if isinstance(image, np.ndarray):
        img = Image.fromarray(image)
        return img if img.mode == "RGB" else img.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    if not path.exists():
        raise FileNotFoundError(f"image {path} not found")
    try:
        with Image.open(path) as im:
            if min_side and min(im.size) > 2 * min_side:
                scale = min_side / min(im.size)
                im.draft("RGB", (math.ceil(im.size[0] * scale), math.ceil(im.size[1] * scale)))
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"corrupt or unreadable image {path}: {e}") from e


def crop_to_box(sample: Sample) -> Sample:
    """Copy of ``sample`` whose image is cropped to its bbox (x0, y0, x1, y1), rounded as PIL does."""
    if sample.bbox is None:
        return sample
    box = tuple(int(round(v)) for v in sample.bbox)
    image = np.asarray(load_image(sample.image).crop(box))
    return Sample(**{**sample.__dict__, "image": image, "bbox": None})


class SampleDataset(torch.utils.data.Dataset):
    """A torch dataset over samples, returning (image tensor (3, H, W), label).

    Args:
        samples: the samples.
        transform: PIL image -> tensor; default converts to a float tensor in [0, 1].
        crop: cut each image to its sample's bbox (x0, y0, x1, y1) first (patches, boxed objects).
    """

    def __init__(self, samples: Sequence[Sample], transform: Optional[Callable[[Image.Image], torch.Tensor]] = None,
                 crop: bool = False) -> None:
        self.samples: List[Sample] = list(samples)
        self.transform = transform
        self.crop = crop

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, i: int) -> Image.Image:
        """The RGB image of sample ``i`` (cut to its box with ``crop``); a JPEG larger than the transform's
        ``reduce_above`` (TrainAugment's smallest useful source side) is decoded at a reduced size."""
        s = self.samples[i]
        if self.crop:
            return load_image(crop_to_box(s).image)
        return load_image(s.image, getattr(self.transform, "reduce_above", 0))

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        img = self.image(i)
        if self.transform is not None:
            x = self.transform(img)
        else:
            x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return x, self.samples[i].label

    def __getitems__(self, indices: Sequence[int]) -> List[Tuple[torch.Tensor, int]]:
        """A DataLoader batch: a transform with ``batch`` (e.g. TrainAugment) augments the images in one call."""
        batch = getattr(self.transform, "batch", None)
        if batch is None:
            return [self[i] for i in indices]
        return list(zip(batch([self.image(i) for i in indices]), (self.samples[i].label for i in indices)))

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 labels."""
        return np.array([s.label for s in self.samples], dtype=np.int64)


def check_class_disjoint(train: Sequence[Sample], test: Sequence[Sample]) -> None:
    """Refuse a split that puts one class on both sides (class-disjoint protocols)."""
    shared = {s.label for s in train if s.label >= 0} & {s.label for s in test if s.label >= 0}
    if shared:
        some = ", ".join(str(c) for c in sorted(shared)[:5])
        raise ValueError(f"split is not class-disjoint: {len(shared)} classes on both sides (e.g. {some})")


def relabel(samples: Sequence[Sample]) -> List[Sample]:
    """Copy of samples with labels mapped to 0..C-1 in order of first appearance (-1 kept)."""
    mapping: Dict[int, int] = {}
    out = []
    for s in samples:
        if s.label >= 0 and s.label not in mapping:
            mapping[s.label] = len(mapping)
        out.append(Sample(**{**s.__dict__, "label": mapping.get(s.label, -1)}))
    return out


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")


def load_samples(dataset: Optional[str] = None, images: Optional[str | Path] = None, split: str = "test",
                 path: Optional[str | Path] = None) -> List[Sample]:
    """Samples of a registered dataset's split (read at ``path``), or of every image file under a folder (recursively)."""
    if (dataset is None) == (images is None):
        raise ValueError("give exactly one of dataset (a registered name) or images (a folder)")
    if dataset is not None:
        splits = DATASETS.create(dataset, path=path)
        if split not in splits:
            raise ValueError(f"split must be one of {sorted(splits)}, got '{split}'")
        return splits[split]
    files = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {images}")
    return [Sample(image=str(p.resolve())) for p in files]

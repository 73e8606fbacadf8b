"""Tiny drawn images for KB and server tests (no dataset download)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import List

import numpy as np
from PIL import Image, ImageDraw

from metricvision.data import Sample
from metricvision.kb.model import ImageTextModel, save_image_model
from metricvision.kb.store import KnowledgeBase
from metricvision.kb.align import train_alignment
from metricvision.models.text import create_text_encoder

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 200, 20)}


def draw(shape: str, color: str, size: int = 32, scale: float = 0.8) -> np.ndarray:
    """(size, size, 3) uint8 image of one shape on white."""
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    m = size * (1 - scale) / 2
    box = (m, m, size - m, size - m)
    if shape == "circle":
        d.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        d.rectangle(box, fill=COLORS[color])
    else:
        d.polygon([(size / 2, m), (m, size - m), (size - m, size - m)], fill=COLORS[color])
    return np.asarray(im)


def shape_samples() -> List[Sample]:
    """24 samples: 3 shapes x 4 colours x 2 scales; label = shape, caption = "<colour> <shape>"."""
    return [Sample(image=draw(s, c, scale=sc), label=i, caption=f"{c} {s}", meta={"color": c, "shape": s})
            for i, s in enumerate(SHAPES) for c in COLORS for sc in (0.8, 0.5)]


def write_folder(root: Path) -> Path:
    """The shape samples as PNG files plus captions.csv; returns the csv path."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption", "label", "color"])
        for n, s in enumerate(shape_samples()):
            Image.fromarray(s.image).save(root / f"{n}.png")
            w.writerow([f"{n}.png", s.caption, s.label, s.meta["color"]])
    return root / "captions.csv"


def shape_classes() -> List[Sample]:
    """The shape samples labelled by (colour, shape): 12 classes of 2 scales each."""
    samples = shape_samples()
    for i, s in enumerate(samples):
        s.label = i // 2
    return samples


def aligned_model(tmp: Path) -> ImageTextModel:
    """MobileNetV2 whose head is aligned to the 'hashing' text space on the shapes, saved and reloaded."""
    model, _ = train_alignment(shape_classes(), create_text_encoder("hashing"), image_size=32, epochs=30, batch_size=8)
    save_image_model(model.embedder, tmp / "model.safetensors", image_size=32, text_model="hashing")
    return ImageTextModel.from_checkpoint(tmp / "model.safetensors")


def tiny_kb(tmp: Path) -> KnowledgeBase:
    """A KB of the 24 shape samples with an aligned model (text search works)."""
    kb = KnowledgeBase.create(tmp / "kb", aligned_model(tmp))
    kb.add(shape_classes())
    return kb

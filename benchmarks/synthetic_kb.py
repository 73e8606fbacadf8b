"""Build a large synthetic KB for load tests: real metadata rows and captions, synthetic embeddings.

Each item gets a caption drawn from a small vocabulary ("red square wooden lamp"), metadata
(color, shape, vendor, year) and an embedding: the caption's text embedding (the KB's
text model, "hashing") plus noise, normalized. Images are 24 drawn shapes shared by all items.
Items are added with ``KnowledgeBase.add_embedded`` in batches, one version per batch (the
index is trained on the first batch and then only appended to), and the vectors are saved to
``OUT.vectors.npy`` so that serve_load.py can measure recall against exact search.

    python benchmarks/synthetic_kb.py OUT [--items 100000] [--batch 20000] [--index IVF256,SQ8 --params nprobe=16]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from metricvision.data import Sample
from metricvision.kb.model import ImageTextModel, save_image_model
from metricvision.kb.store import KnowledgeBase
from metricvision.models import Embedder
from metricvision.models.text import create_text_encoder

COLORS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 200, 20),
          "black": (20, 20, 20), "orange": (240, 140, 20), "purple": (130, 40, 170), "grey": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
MATERIALS = ("wooden", "metal", "glass", "plastic", "paper", "stone", "leather", "cotton")
OBJECTS = ("lamp", "chair", "cup", "bottle", "clock", "vase", "box", "bag", "hat", "shoe", "book", "toy",
           "plate", "bowl", "key", "bell", "ring", "kite", "drum", "fan")
VENDORS = tuple(f"vendor{i}" for i in range(10))


def shape_images(folder: Path) -> list[Path]:
    """24 PNGs of coloured shapes (the items' images)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for color, rgb in list(COLORS.items())[:8]:
        for shape in SHAPES:
            im = Image.new("RGB", (32, 32), "white")
            d = ImageDraw.Draw(im)
            if shape == "circle":
                d.ellipse((4, 4, 28, 28), fill=rgb)
            elif shape == "square":
                d.rectangle((4, 4, 28, 28), fill=rgb)
            else:
                d.polygon([(16, 4), (4, 28), (28, 28)], fill=rgb)
            paths.append(folder / f"{color}_{shape}.png")
            im.save(paths[-1])
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--index", default="IVF256,SQ8")
    ap.add_argument("--params", default="nprobe=16")
    ap.add_argument("--noise", type=float, default=0.02, help="noise added to each caption embedding (per coordinate)")
    a = ap.parse_args()
    out = Path(a.out)
    rng = np.random.default_rng(0)
    text = create_text_encoder("hashing")
    ckpt = out.parent / f"{out.name}.model.safetensors"
    save_image_model(Embedder("mobilenet_v2", "avg", text.dim, pretrained=True), ckpt, image_size=32, text_model="hashing")
    model = ImageTextModel.from_checkpoint(ckpt)
    KnowledgeBase.create(out, model, index_spec=a.index, index_params=a.params)
    kb = KnowledgeBase.open(out, model, writer=True)
    images = shape_images(out.parent / f"{out.name}.images")
    vectors = np.lib.format.open_memmap(str(out.parent / f"{out.name}.vectors.npy"), "w+", np.float32, (a.items, text.dim))
    start = time.perf_counter()
    for first in range(0, a.items, a.batch):
        n = min(a.batch, a.items - first)
        pick = [rng.integers(0, len(v), n) for v in (COLORS, SHAPES, MATERIALS, OBJECTS, VENDORS)]
        colors, shapes = np.array(list(COLORS))[pick[0]], np.array(SHAPES)[pick[1]]
        captions = [f"{c} {s} {MATERIALS[m]} {OBJECTS[o]}" for c, s, m, o in zip(colors, shapes, pick[2], pick[3])]
        samples = [Sample(image=str(images[(list(COLORS).index(c) * 3 + SHAPES.index(s)) % len(images)]), caption=cap,
                          label=SHAPES.index(s), meta={"color": c, "shape": s, "vendor": VENDORS[v], "year": int(2000 + v)})
                   for c, s, cap, v in zip(colors, shapes, captions, pick[4])]
        unique, inverse = np.unique(captions, return_inverse=True)  # a few thousand distinct captions
        x = text.encode_text(list(unique)).numpy()[inverse] + a.noise * rng.standard_normal((n, text.dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        vectors[first : first + n] = x
        kb.add_embedded(samples, x)
        print(f"{first + n} items, version {kb.version}, {time.perf_counter() - start:.0f} s", flush=True)
    vectors.flush()
    print(f"built {out}: {len(kb)} items, index {a.index} ({a.params}), {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

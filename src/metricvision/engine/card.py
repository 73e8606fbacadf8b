"""The model card of a run folder: what the model is, what it was trained on, how it scores.

``model_card.json`` sits beside ``checkpoint.safetensors``; ``metricvision info RUN`` prints it,
and ``metricvision export`` copies its preprocessing next to the exported file.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Sequence

from metricvision._atomic import atomic_write
from metricvision.config import Recipe
from metricvision.data.sample import Sample
from metricvision.models.embedder import IMAGENET_MEAN, IMAGENET_STD

CARD = "model_card.json"


def preprocessing(image_size: int) -> Dict[str, Any]:
    """How an image becomes the model's input, as the ``eval`` transform does it."""
    return {
        "input": f"float32 tensor (batch, 3, {image_size}, {image_size}), RGB, values in [0, 1]",
        "steps": ["convert to RGB", f"resize to {image_size} x {image_size} (bilinear, antialiased)",
                  "scale 0..255 to 0..1 (float32)", "NCHW layout"],
        "inside_the_model": {"normalize_mean": list(IMAGENET_MEAN), "normalize_std": list(IMAGENET_STD)},
        "output": "float32 (batch, dim), L2-normalized: cosine similarity = dot product",
    }


def data_licence(samples: Sequence[Sample], dataset: str) -> str:
    """The licence of the images: per vendor for emoji, otherwise a pointer to the dataset's own terms."""
    vendors = sorted({str(s.meta["vendor"]) for s in samples if s.meta.get("vendor")})
    if dataset == "emoji" and vendors:
        from metricvision.data.emoji_build import LICENSES

        return "; ".join(f"{v}: {LICENSES.get(v, 'unknown')}" for v in vendors)
    return f"not recorded: see the terms of dataset '{dataset}'"


def model_card(recipe: Recipe, metrics: Dict[str, Any], train: Sequence[Sample], test: Sequence[Sample],
               epochs_done: int) -> Dict[str, Any]:
    """The card of a finished run (JSON-able)."""
    from metricvision import __version__

    m, d = recipe.model, recipe.data
    return {
        "name": recipe.name,
        "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "metricvision": __version__,
        "model": {"backbone": m.backbone, "pretrained": m.pretrained, "pooling": m.pooling, "dim": m.dim,
                  "weights": "checkpoint.safetensors (prefix 'model.')"},
        "preprocessing": preprocessing(d.image_size),
        "training": {"loss": recipe.loss.name, "supervision": recipe.supervision.name, "epochs": f"{epochs_done}/{recipe.train.epochs}",
                     "seed": recipe.train.seed, "recipe": "recipe.yaml"},
        "data": {"dataset": d.dataset, "path": d.path or "(built-in)",
                 "train": f"{len(train)} images, {len({s.label for s in train})} classes",
                 "test": f"{len(test)} images, {len({s.label for s in test})} classes (never seen in training)",
                 "licence": data_licence([*train, *test], d.dataset)},
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "warnings": list(metrics.get("warnings", [])),
    }


def write_model_card(run_dir: str | Path, card: Dict[str, Any]) -> Path:
    """Write ``run_dir/model_card.json`` (temporary name, then renamed)."""
    path = Path(run_dir) / CARD
    with atomic_write(path) as f:
        f.write(json.dumps(card, indent=2).encode())
    return path


def read_model_card(run_dir: str | Path) -> Dict[str, Any]:
    """The card of a run folder; FileNotFoundError says what a run folder holds."""
    path = Path(run_dir) / CARD
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a run folder written by `metricvision train`?")
    return json.loads(path.read_text())

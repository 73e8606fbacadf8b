"""The README's main table: unseen emoji identities, raw pixels vs untrained vs pretrained vs trained.

    python benchmarks/emoji_baselines.py --run runs/default-YYYYmmdd-HHMMSS

Every row is scored by the same `evaluate_retrieval` on the test (unseen) half.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from metricvision.config import load_recipe
from metricvision.data.emoji import load_emoji
from metricvision.data.sample import SampleDataset
from metricvision.data.transforms import TRANSFORMS
from metricvision.engine.builders import build_model
from metricvision.engine.runs import load_run
from metricvision.metrics import evaluate_retrieval
from metricvision.models import Embedder

sys.path.insert(0, str(Path(__file__).parent))
from pixel_baselines import pixel_embeddings  # noqa: E402

KEYS = ("precision@1", "recall@4", "r_precision", "map@r", "nmi")


def embed(model: Embedder, samples, size: int) -> torch.Tensor:
    loader = torch.utils.data.DataLoader(SampleDataset(samples, TRANSFORMS.create("eval", size=size)), batch_size=256)
    return model.encode((x for x, _ in loader))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", type=Path, default=None, help="a run folder of the default recipe (its metrics.json row is added)")
    a = ap.parse_args()
    recipe = load_recipe("default")
    test = load_emoji("test")
    labels = np.array([s.label for s in test])
    rows: Dict[str, Dict[str, float]] = {}
    rows["raw pixels (40x40x3)"] = evaluate_retrieval(pixel_embeddings(test), labels)
    recipe.model.pretrained = False
    torch.manual_seed(0)
    rows["untrained model (random init)"] = evaluate_retrieval(embed(build_model(recipe), test, recipe.data.image_size), labels)
    pretrained = Embedder("mobilenet_v2", "gem", dim=0, pretrained=True)
    rows["pretrained MobileNetV2, no training"] = evaluate_retrieval(embed(pretrained, test, recipe.data.image_size), labels)
    if a.run:
        _, model = load_run(a.run)
        rows[f"trained default ({a.run.name})"] = evaluate_retrieval(embed(model, test, recipe.data.image_size), labels)
    print("| model | " + " | ".join(KEYS) + " |\n|---|" + "---|" * len(KEYS))
    for name, m in rows.items():
        print(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in KEYS) + " |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

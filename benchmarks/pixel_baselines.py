"""Raw-pixel baseline rows of the dataset matrix: each image flattened, centred, L2-normalized, then scored
by the same `evaluate_retrieval` as a trained run, on each dataset's test split (CPU, no training).

    python benchmarks/pixel_baselines.py --datasets emoji icons glyphs --out benchmarks/results_datasets.json

Rows are written as recipe "raw pixels", seed 0 (deterministic), merged into --out like run_matrix.py's rows.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from run_matrix import KEYS, merge_rows  # noqa: E402

from metricvision.data import DATASETS  # noqa: E402
from metricvision.data.sample import Sample  # noqa: E402
from metricvision.metrics import evaluate_retrieval  # noqa: E402


def pixel_embeddings(samples: Sequence[Sample]) -> torch.Tensor:
    """(N, H * W * C) embeddings: uint8 pixels / 255, minus their mean over the samples (no labels), L2-normalized."""
    if not samples or not isinstance(samples[0].image, np.ndarray):
        raise ValueError("pixel_embeddings needs samples holding in-memory image arrays (a built-in dataset)")
    x = torch.tensor(np.stack([s.image for s in samples]).reshape(len(samples), -1), dtype=torch.float32) / 255
    return torch.nn.functional.normalize(x - x.mean(0), dim=1)


def pixel_row(dataset: str, clustering: bool = True) -> Dict:
    """The matrix row of raw pixels on ``dataset``'s test split."""
    test = DATASETS.create(dataset)["test"]
    m = evaluate_retrieval(pixel_embeddings(test), np.array([s.label for s in test]), clustering=clustering)
    return {"recipe": "raw pixels", "dataset": dataset, "seed": 0, **m}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["emoji", "icons", "glyphs"], help="built-in dataset names")
    ap.add_argument("--no-clustering", action="store_true", help="skip NMI (k-means)")
    ap.add_argument("--out", type=Path, default=None, help="JSON list of rows to merge into")
    ap.add_argument("--missing-only", action="store_true", help="skip the datasets that --out already has a row of")
    a = ap.parse_args()
    done = set()
    if a.missing_only and a.out and a.out.exists():
        done = {r["dataset"] for r in json.loads(a.out.read_text()) if r["recipe"] == "raw pixels"}
    rows: List[Dict] = []
    for d in (d for d in a.datasets if d not in done):
        rows.append(pixel_row(d, not a.no_clustering))
        print(json.dumps({k: rows[-1][k] for k in ("dataset", *KEYS) if k in rows[-1]}), flush=True)
    if a.out and rows:
        merge_rows(a.out, rows)


if __name__ == "__main__":
    main()

"""Run folders: naming, finding the latest, and loading a trained Embedder back."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Tuple

import yaml

from metricvision.config import Recipe, from_dict
from metricvision.engine.builders import build_model
from metricvision.engine.checkpoint import load_checkpoint
from metricvision.engine.trainer import CHECKPOINT
from metricvision.models import Embedder

RUNS_DIR = Path("runs")


def new_run_dir(recipe_name: str, root: Path = RUNS_DIR) -> Path:
    """runs/<recipe>-<YYYYmmdd-HHMMSS> (suffixed if taken)."""
    base = root / f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def latest_run_dir(recipe_name: str, root: Path = RUNS_DIR) -> Optional[Path]:
    """The newest runs/<recipe>-* folder, or None."""
    runs = sorted(p for p in root.glob(f"{recipe_name}-*") if p.is_dir())
    return runs[-1] if runs else None


def load_run(run_dir: str | Path) -> Tuple[Recipe, Embedder]:
    """The recipe and the trained Embedder (eval mode) of a run folder."""
    run_dir = Path(run_dir)
    recipe_file, ckpt = run_dir / "recipe.yaml", run_dir / CHECKPOINT
    for f in (recipe_file, ckpt):
        if not f.exists():
            raise FileNotFoundError(f"{f} not found: is {run_dir} a run folder written by `metricvision train`?")
    recipe = from_dict(Recipe, yaml.safe_load(recipe_file.read_text()))
    recipe.model.pretrained = False
    model = build_model(recipe)
    load_checkpoint(ckpt, {"model": model})
    return recipe, model.eval()

"""Run folders: naming, finding the latest, and loading a trained Embedder back."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import yaml

from metricvision.config import Recipe, apply_overrides, from_dict
from metricvision.engine.builders import build_model
from metricvision.engine.checkpoint import load_checkpoint, read_info
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


def _flat(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def resumed_recipe(run_dir: str | Path, overrides: Sequence[str] = (), allow_changes: bool = False) -> Recipe:
    """The recipe a run recorded (recipe.yaml, else its checkpoint), with ``overrides`` applied.

    Raises:
        FileNotFoundError: the folder has neither recipe.yaml nor a checkpoint.
        ValueError: an override changes the recorded recipe and ``allow_changes`` is False.
    """
    run_dir = Path(run_dir)
    recipe_file, ckpt = run_dir / "recipe.yaml", run_dir / CHECKPOINT
    if recipe_file.exists():
        recorded = yaml.safe_load(recipe_file.read_text())
    elif ckpt.exists():
        recorded = read_info(ckpt)["recipe"]
    else:
        raise FileNotFoundError(f"{recipe_file} not found (nor {CHECKPOINT}): is {run_dir} a run folder written by `metricvision train`?")
    before = _flat(from_dict(Recipe, recorded).to_dict())
    recipe = from_dict(Recipe, apply_overrides(recorded, overrides))
    changed = {k: v for k, v in _flat(recipe.to_dict()).items() if before.get(k) != v}
    if changed and not allow_changes:
        diff = ", ".join(f"{k}={v!r} (recorded {before.get(k)!r})" for k, v in changed.items())
        raise ValueError(f"--resume: --set would change the run's recorded recipe: {diff}; "
                         "pass --allow-changes to resume with a changed recipe")
    return recipe

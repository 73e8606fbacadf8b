"""Loss families on unseen emoji identities: our version of "A Metric Learning Reality Check".

Runs every recipes/loss_*.yaml with several seeds and prints P@1 and MAP@R, mean +- std.

    python benchmarks/loss_quality.py [--seeds 0 1 2] [--set train.device=cuda] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from metricvision.config import RECIPES_DIR, load_recipe
from metricvision.engine.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipes", nargs="+", default=sorted(p.stem for p in RECIPES_DIR.glob("loss_*.yaml")))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    rows = {}
    for name in a.recipes:
        runs = []
        for seed in a.seeds:
            recipe = load_recipe(name, [f"train.seed={seed}", *a.overrides])
            t0 = time.time()
            with tempfile.TemporaryDirectory() as d:
                m = Trainer(recipe, d).fit()
            runs.append({"seed": seed, "p@1": m["precision@1"], "map@r": m["map@r"], "seconds": time.time() - t0})
            print(json.dumps({"recipe": name, **runs[-1]}), flush=True)
        rows[name] = {"loss": recipe.loss.name, "runs": runs}
    print(f"\n| recipe | loss | P@1 | MAP@R | seconds/run |\n|---|---|---|---|---|")
    for name, row in rows.items():
        cells = []
        for key in ("p@1", "map@r"):
            vals = [r[key] for r in row["runs"]]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.3f} +- {sd:.3f}")
        secs = statistics.mean(r["seconds"] for r in row["runs"])
        print(f"| {name} | {row['loss']} | {cells[0]} | {cells[1]} | {secs:.0f} |")
    if a.out:
        a.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

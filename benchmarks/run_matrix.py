"""Run a matrix of `metricvision train` jobs (recipes x datasets x seeds) in parallel, one process each.

Each job is ``metricvision train RECIPE --set train.seed=S --set data.dataset=D [--set ...]`` in its own run
folder under --root; a job whose metrics.json already exists is skipped and one with a checkpoint but no
metrics.json continues from its last finished epoch (``train --resume``), so a killed matrix resumes. Every job's
metrics are gathered into one JSON file (--out) and printed as a table, mean +- std over seeds.
``--set-for D K=V`` overrides K for dataset D's jobs only (e.g. fewer epochs on a larger dataset; a --set of K
wins); ``--tag T`` names a variant (its rows' recipe is "RECIPE [T]").

    python benchmarks/run_matrix.py --recipes default loss_proxy --datasets emoji icons --seeds 0 1 2 \\
        --jobs 2 --root runs/matrix --out benchmarks/results_matrix.json [--set train.device=cuda]
    python benchmarks/run_matrix.py --summarize benchmarks/results_matrix.json

--jobs N runs N jobs at once, each with ``--threads`` torch threads (default: cores // N). In a --set value,
``{seed}`` becomes the job's seed (``--set distill.teacher=runs/matrix/default__-__s{seed}``). With --tag the rows carry
it, so variants of one recipe (other --set) keep apart in --out and in the table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

KEYS = ("precision@1", "r_precision", "map@r", "nmi")


def job_name(recipe: str, dataset: str, seed: int, tag: str) -> str:
    """Run-folder name of one job."""
    return f"{recipe}__{dataset}__s{seed}" + (f"__{tag}" if tag else "")


def row_label(recipe: str, tag: str) -> str:
    """The "recipe" column of a job's row: the recipe, with its variant tag in brackets."""
    return f"{recipe} [{tag}]" if tag else recipe


def run_job(recipe: str, dataset: str, seed: int, a: argparse.Namespace) -> Dict:
    """Train one job (or read its finished metrics) and return its row."""
    out = a.root / job_name(recipe, dataset, seed, a.tag)
    metrics = out / "metrics.json"
    t0, ran = time.time(), not metrics.exists()
    if ran:
        sets = [f"train.seed={seed}", *(kv for d, kv in a.set_for if d == dataset),
                *(o.replace("{seed}", str(seed)) for o in a.overrides)]
        if dataset != "-":
            sets.append(f"data.dataset={dataset}")
        cmd = [sys.executable, "-m", "metricvision.cli", "train", recipe, "--out", str(out), "--no-report"]
        for s in sets:
            cmd += ["--set", s]
        if (out / "checkpoint.safetensors").exists():  # a killed job continues from its last epoch
            cmd.append("--resume")
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(a.root / f"{out.name}.log", "w") as log:
            rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc != 0 or not metrics.exists():
            print(f"FAILED {out.name} (rc {rc}); see {a.root / (out.name + '.log')}", flush=True)
            return {"recipe": recipe, "dataset": dataset, "seed": seed, "tag": a.tag, "error": rc}
    m = json.loads(metrics.read_text())
    row = {"recipe": recipe, "dataset": dataset, "seed": seed, "tag": a.tag,
           **({"seconds": round(time.time() - t0, 1)} if ran else {}),  # a finished job read back has no wall time here
           **{k: v for k, v in m.items() if isinstance(v, (int, float))}}
    print(json.dumps({k: row[k] for k in ("recipe", "dataset", "seed", "seconds", *KEYS) if k in row}), flush=True)
    return row


def row_key(row: Dict) -> tuple:
    """(recipe, dataset, tag, seed): one job of the matrix."""
    return row["recipe"], row["dataset"], row.get("tag", ""), row["seed"]


def merge_rows(path: Path, rows: List[Dict]) -> None:
    """Write ``rows`` into the JSON list at ``path``, replacing its rows of the same job (row_key)."""
    old = json.loads(path.read_text()) if path.exists() else []
    done = {row_key(r) for r in rows}
    path.write_text(json.dumps([o for o in old if row_key(o) not in done] + rows, indent=1))


def mean_std(rows: List[Dict], key: str) -> str:
    """"mean +- std" (x 100, sample std over the rows, 0 for one row) of ``key``; "" when no row has it."""
    vals = [100 * r[key] for r in rows if key in r]
    if not vals:
        return ""
    return f"{statistics.mean(vals):.1f} +- {statistics.stdev(vals) if len(vals) > 1 else 0.0:.1f}"


def summarize(rows: List[Dict], keys=KEYS) -> str:
    """Markdown table: one line per (recipe[tag], dataset), mean +- std (x 100) of ``keys`` over seeds."""
    groups: Dict[tuple, List[Dict]] = {}
    for r in rows:
        if "error" not in r:
            name = r["recipe"] + (f" [{r['tag']}]" if r.get("tag") else "")
            groups.setdefault((name, r["dataset"]), []).append(r)
    present = [k for k in keys if any(k in r for g in groups.values() for r in g)]
    lines = ["| recipe | dataset | seeds | " + " | ".join(present) + " |",
             "|---|---|---|" + "---|" * len(present)]
    for (recipe, dataset), g in groups.items():
        cells = [mean_std(g, k) for k in present]
        lines.append(f"| {recipe} | {dataset} | {len(g)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["default"], help="recipe names or YAML paths")
    ap.add_argument("--datasets", nargs="+", default=["-"], help="data.dataset values ('-' keeps the recipe's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed values")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override for every job ({seed}: the job's seed)")
    ap.add_argument("--set-for", nargs=2, action="append", default=[], metavar=("DATASET", "KEY=VALUE"),
                    help="override for the jobs of DATASET only (--set wins over it)")
    ap.add_argument("--tag", default="", help="variant name: suffix of the run folders, '[TAG]' after the recipe in tables")
    ap.add_argument("--jobs", type=int, default=1, help="jobs run at once")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per job (default cores // jobs)")
    ap.add_argument("--root", type=Path, default=Path("runs/matrix"), help="folder of the run folders")
    ap.add_argument("--out", type=Path, default=None, help="JSON file of every job's metrics")
    ap.add_argument("--summarize", type=Path, default=None, help="only print the table of this JSON file")
    a = ap.parse_args()
    if a.summarize:
        print(summarize(json.loads(a.summarize.read_text())))
        return
    a.threads = a.threads or max(1, (os.cpu_count() or 1) // a.jobs)
    unknown = sorted({d for d, _ in a.set_for} - set(a.datasets))
    if unknown:
        raise SystemExit(f"--set-for names datasets {unknown} that are not in --datasets {a.datasets}")
    jobs = [(r, d, s) for r in a.recipes for d in a.datasets for s in a.seeds]
    with ThreadPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(lambda j: run_job(*j, a), jobs))
    if a.out:
        merge_rows(a.out, rows)
    print(summarize(rows))


if __name__ == "__main__":
    main()

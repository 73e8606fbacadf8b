"""README's "Results across datasets" table from benchmarks/results_datasets.json (written by
benchmarks/matrix_datasets.sh): one row per method, per dataset P@1 and MAP@R, mean +- std (x 100) over seeds.

    python benchmarks/format_datasets.py benchmarks/results_datasets.json [--keys precision@1 map@r]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence

sys.path.insert(0, str(Path(__file__).parent))
from run_matrix import mean_std  # noqa: E402

SHORT = {"precision@1": "P@1", "map@r": "MAP@R", "r_precision": "RP", "nmi": "NMI"}
# baselines first, then the default recipe, then the loss families; other rows follow in file order
ORDER = ("raw pixels", "default [pretrained]", "default", "loss_classification", "loss_proxy", "loss_pair", "loss_ranking")


def cell(rows: List[Dict], key: str) -> str:
    """One row: its value (x 100; deterministic baselines, single runs); several: "mean +- std"."""
    if len(rows) == 1 and key in rows[0]:
        return f"{100 * rows[0][key]:.1f}"
    return mean_std(rows, key)


def table(rows: List[Dict], keys: Sequence[str] = ("precision@1", "map@r")) -> str:
    """Markdown table: methods x (dataset, key), cells "mean +- std" over the seeds found."""
    ok = [r for r in rows if "error" not in r]
    datasets = list(dict.fromkeys(r["dataset"] for r in ok))
    methods = sorted(dict.fromkeys(r["recipe"] for r in ok), key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER))
    groups: Dict[tuple, List[Dict]] = {}
    for r in ok:
        groups.setdefault((r["recipe"], r["dataset"]), []).append(r)
    head = [f"{d} {SHORT.get(k, k)}" for d in datasets for k in keys]
    lines = ["| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for m in methods:
        cells = [cell(groups.get((m, d), []), k) for d in datasets for k in keys]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="JSON list of rows (run_matrix.py --out, pixel_baselines.py --out)")
    ap.add_argument("--keys", nargs="+", default=["precision@1", "map@r"], help="metrics shown per dataset")
    a = ap.parse_args()
    print(table(json.loads(a.results.read_text()), a.keys))


if __name__ == "__main__":
    main()

"""README's "Results across datasets" tables from the JSON rows of benchmarks/matrix_datasets.sh: retrieval
rows (those with P@1) as one line per method, per dataset P@1 and MAP@R; the other rows (supervision settings)
as one line per recipe with its setting's scores. Mean +- std (x 100) over seeds.

    python benchmarks/format_datasets.py benchmarks/results_datasets.json benchmarks/results_fashion_settings.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence

sys.path.insert(0, str(Path(__file__).parent))
from run_matrix import mean_std, row_key, row_label  # noqa: E402

SHORT = {"precision@1": "P@1", "map@r": "MAP@R", "r_precision": "RP", "nmi": "NMI"}
# the scores shown for a supervision-setting row, where present (incremental, long tail, open set; OLTR's classifier)
SETTING_KEYS = ("incremental_sdc_average_incremental_accuracy", "incremental_sdc_forgetting",
                "incremental_nme_average_incremental_accuracy", "incremental_nme_forgetting", "final_accuracy",
                "accuracy", "many_shot", "medium_shot", "few_shot", "f_measure", "closed_accuracy", "auroc", "auroc_max_score",
                "oltr_accuracy", "oltr_few_shot", "oltr_f_measure", "oltr_auroc", "oltr_auroc_max_score")
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


def settings_table(rows: List[Dict], keys: Sequence[str] = SETTING_KEYS) -> str:
    """Markdown table: one line per (recipe, dataset), its present ``keys`` as "key mean +- std"."""
    groups: Dict[tuple, List[Dict]] = {}
    for r in rows:
        if "error" not in r:
            groups.setdefault((r["recipe"], r["dataset"]), []).append(r)
    lines = ["| recipe | seeds | scores (x 100) |", "|---|---|---|"]
    for (recipe, _), g in groups.items():
        scores = "; ".join(f"{k} {cell(g, k)}" for k in keys if any(k in r for r in g))
        lines.append(f"| {recipe} | {len(g)} | {scores} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, nargs="+", help="JSON lists of rows (run_matrix.py / pixel_baselines.py --out)")
    ap.add_argument("--keys", nargs="+", default=["precision@1", "map@r"], help="retrieval metrics shown per dataset")
    a = ap.parse_args()
    # a job found in several files counts once: the last file's row; a variant shows as "recipe [tag]"
    unique = {row_key(r): r for path in a.results if path.exists() for r in json.loads(path.read_text())}
    rows = [{**r, "recipe": row_label(r["recipe"], r.get("tag", ""))} for r in unique.values() if "error" not in r]
    retrieval = [r for r in rows if "precision@1" in r]
    if retrieval:
        print(table(retrieval, a.keys))
    if len(retrieval) < len(rows):
        print(settings_table([r for r in rows if "precision@1" not in r]))


if __name__ == "__main__":
    main()

"""README's supervision tables from the rows of benchmarks/matrix_settings.sh (benchmarks/run_matrix.py JSON).

Each table is one setting: its recipes and baselines as rows, its own measures as columns, mean +- std
over seeds (x 100; "n" = seeds found, "s" = mean seconds per job). The merged rows are written to --out.

    python benchmarks/settings_table.py runs/settings/*.json --runs runs/settings --out benchmarks/results_settings.json
    python benchmarks/settings_table.py benchmarks/results_settings.json
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

# (label, recipe, tag, {column key: metrics key} where the row reads another key)
Row = Tuple[str, str, str, Dict[str, str]]
RETRIEVAL = [("P@1", "precision@1"), ("MAP@R", "map@r")]
SHOTS = [("accuracy", "accuracy"), ("many", "many_shot"), ("medium", "medium_shot"), ("few", "few_shot"),
         ("open-set F", "f_measure"), ("AUROC", "auroc")]
OPEN = {"f_measure": "open/f_measure", "auroc": "open/auroc"}
CLASSIFIER = {k: f"classifier_{k}" for _, k in SHOTS}  # a baseline's own cosine classifier, scored as OLTR's
DCL = "last stride removed, OLTR's centroid loss (repulsion, centroids learned from the class means): "
DCLM = "last stride removed, OLTR's centroid loss, centroids learned with OLTR's optimizer (momentum 0.9, weight decay 5e-4): "
SECTIONS: List[Tuple[str, List[Row], List[Tuple[str, str]]]] = [
    ("Semi-supervised (10% of each training identity's labels)", [
        ("10% labels, labelled only", "semi_labelled_10", "", {}),
        ("10% labels + label propagation (k=20, alpha=0.5)", "semi_propagation_10", "", {}),
        ("10% labels + label propagation, k=10, alpha=0.9", "semi_propagation_10", "k10_a09", {}),
        ("10% labels + propagation + mean teacher", "semi_propagation_mean_teacher_10", "", {}),
        ("10% labels + propagation + mean teacher, k=10, alpha=0.9", "semi_propagation_mean_teacher_10", "k10_a09", {}),
        ("100% labels (same batches)", "semi_labelled_10", "all_labels", {}),
        ("former 128-d head: 10% labels, labelled only", "semi_labelled_10", "head128", {}),
        ("former 128-d head: 10% labels + label propagation, k=10, alpha=0.9", "semi_propagation_10", "head128", {}),
        ("former 128-d head: 10% labels + label propagation, k=50, alpha=0.99", "semi_propagation_10", "k50_a099", {}),
        ("former 128-d head: 10% labels + propagation + mean teacher", "semi_propagation_mean_teacher_10", "head128", {}),
        ("former 128-d head: 100% labels (same batches)", "semi_labelled_10", "all_labels_head128", {}),
    ], RETRIEVAL),
    ("Unsupervised", [
        ("pretrained, no training", "unsup_manifold_mining", "pretrained", {}),
        ("mining on manifolds", "unsup_manifold_mining", "", {}),
    ], RETRIEVAL),
    ("Class-incremental (4 tasks; NME = nearest mean of exemplars, SDC = drift-compensated class means)", [
        ("metric learning + self-distillation", "incremental_metric", "", {}),
        ("iCaRL", "incremental_icarl", "", {}),
    ], [("avg. incr. acc. NME", "incremental_nme_average_incremental_accuracy"),
        ("forgetting NME", "incremental_nme_forgetting"), ("final NME", "incremental_nme_final_accuracy"),
        ("avg. incr. acc. SDC", "incremental_sdc_average_incremental_accuracy"), ("forgetting SDC", "incremental_sdc_forgetting")]),
    ("Long tail and open set (emoji_lt, a tenth of the subcategories held out as the open split)", [
        ("class-balanced normalized softmax, NCM", "emoji_lt_balanced", "open", OPEN),
        ("instance-sampled normalized softmax, NCM", "emoji_lt_instance", "open", OPEN),
        ("class-balanced normalized softmax, its classifier", "emoji_lt_balanced", "open", CLASSIFIER),
        ("instance-sampled normalized softmax, its classifier", "emoji_lt_instance", "open", CLASSIFIER),
        ("OLTR, two stages, NCM", "emoji_lt_oltr", "open", OPEN),
        ("OLTR, two stages, its classifier", "emoji_lt_oltr", "open", {k: f"oltr_{k}" for _, k in SHOTS}),
        ("last stride removed: class-balanced normalized softmax, NCM", "emoji_lt_balanced", "ls1", OPEN),
        ("last stride removed: instance-sampled normalized softmax, NCM", "emoji_lt_instance", "ls1", OPEN),
        ("last stride removed: class-balanced normalized softmax, its classifier", "emoji_lt_balanced", "ls1", CLASSIFIER),
        ("last stride removed: instance-sampled normalized softmax, its classifier", "emoji_lt_instance", "ls1", CLASSIFIER),
        ("last stride removed: OLTR, two stages, NCM", "emoji_lt_oltr", "ls1", OPEN),
        ("last stride removed: OLTR, two stages, its classifier", "emoji_lt_oltr", "ls1", {k: f"oltr_{k}" for _, k in SHOTS}),
        (f"{DCL}OLTR, two stages, NCM", "emoji_lt_oltr", "ls1_dcl", OPEN),
        (f"{DCL}OLTR, two stages, its classifier", "emoji_lt_oltr", "ls1_dcl", {k: f"oltr_{k}" for _, k in SHOTS}),
        (f"{DCLM}OLTR, two stages, NCM", "emoji_lt_oltr", "ls1_dclm", OPEN),
        (f"{DCLM}OLTR, two stages, its classifier", "emoji_lt_oltr", "ls1_dclm", {k: f"oltr_{k}" for _, k in SHOTS}),
        ("former 8 epochs: class-balanced normalized softmax, NCM", "emoji_lt_balanced", "open_e8", OPEN),
        ("former 8 epochs: OLTR, one stage, NCM", "emoji_lt_oltr", "open_e8", OPEN),
        ("former 8 epochs: OLTR, one stage, its classifier", "emoji_lt_oltr", "open_e8", {k: f"oltr_{k}" for _, k in SHOTS}),
    ], SHOTS),
    ("Few-shot (5-way 1-shot, 5 queries; accuracy and its 95% interval)", [
        ("episodic training, prototypes", "fewshot_episodic", "", {"accuracy": "fewshot/accuracy", "ci95": "fewshot/ci95"}),
        ("episodic training at 72 px (dense's input), prototypes", "fewshot_episodic", "px72",
         {"accuracy": "fewshot/accuracy", "ci95": "fewshot/ci95"}),
        ("dense classification, prototypes", "fewshot_dense", "", {}),
        ("dense classification + implanting (200 episodes)", "fewshot_dense", "implant", {}),
        ("dense classification, last block's pooled maps (200 episodes)", "fewshot_dense", "implant",
         {"accuracy": "frozen_accuracy", "ci95": "frozen_ci95"}),
    ], [("accuracy", "accuracy"), ("ci95", "ci95")]),
    ("Distillation (teacher = the default recipe's run of the same seed)", [
        ("teacher: default (MobileNetV2, 72 px)", "default", "", {}),
        ("student: distill (MobileNetV2, 40 px)", "distill", "", {}),
    ], RETRIEVAL),
]


def cell(rows: Sequence[Dict], key: str) -> Tuple[Optional[float], str]:
    """(mean, "mean +- std") of 100 x ``key`` over ``rows`` (None, "" when absent)."""
    vals = [100 * r[key] for r in rows if isinstance(r.get(key), (int, float)) and r[key] == r[key]]
    if not vals:
        return None, ""
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return statistics.mean(vals), f"{statistics.mean(vals):.1f} +- {sd:.1f}"


def tables(rows: Sequence[Dict]) -> str:
    """Markdown: one table per setting, then the goals' derived figures (gap closed, gains)."""
    ok = [r for r in rows if "error" not in r]
    lines: List[str] = []
    means: Dict[Tuple[str, str], Optional[float]] = {}
    for title, spec, columns in SECTIONS:
        lines += ["", f"{title}:", "", "| setting | recipe | n | " + " | ".join(h for h, _ in columns) + " | s |",
                  "|---|---|---|" + "---|" * (len(columns) + 1)]
        for label, recipe, tag, rename in spec:
            group = [r for r in ok if r["recipe"] == recipe and r.get("tag", "") == tag]
            cells = []
            for header, key in columns:
                mean, text = cell(group, rename.get(key, key))
                means[(label, header)] = mean
                cells.append(text)
            seconds = [r["seconds"] for r in group if "seconds" in r]
            name = recipe + (f" [{tag}]" if tag else "")
            took = f"{statistics.mean(seconds):.0f}" if seconds else ""
            lines.append(f"| {label} | {name} | {len(group)} | " + " | ".join(cells) + f" | {took} |")
    lines += ["", *goals(means)]
    failed = [r for r in rows if "error" in r]
    if failed:
        lines.append("failed jobs: " + ", ".join(f"{r['recipe']}[{r.get('tag', '')}] s{r['seed']}" for r in failed))
    return "\n".join(lines)


def goals(m: Dict[Tuple[str, str], Optional[float]]) -> List[str]:
    """The issue's goals from the tables' means (skipped where a mean is missing)."""
    out = []

    def diff(a: Tuple[str, str], b: Tuple[str, str]) -> Optional[float]:
        return None if m.get(a) is None or m.get(b) is None else m[a] - m[b]

    for model in ("", "former 128-d head: "):
        low, high = m.get((f"{model}10% labels, labelled only", "P@1")), m.get((f"{model}100% labels (same batches)", "P@1"))
        for method in ("10% labels + label propagation (k=20, alpha=0.5)", "10% labels + label propagation, k=10, alpha=0.9",
                       "10% labels + propagation + mean teacher"):
            got = m.get((model + method, "P@1"))
            if None not in (low, high, got) and high > low:
                out.append(f"- {model}{method}: closes {100 * (got - low) / (high - low):.1f}% of the P@1 gap to all labels"
                           " (goal >= 50%)")
    gain = diff(("mining on manifolds", "P@1"), ("pretrained, no training", "P@1"))
    if gain is not None:
        out.append(f"- mining on manifolds: {gain:+.1f} P@1 over the pretrained model (goal >= +3)")
    for col in ("avg. incr. acc. NME", "forgetting NME"):
        d = diff(("metric learning + self-distillation", col), ("iCaRL", col))
        if d is not None:
            out.append(f"- incremental, metric - iCaRL, {col}: {d:+.1f} (goal: higher accuracy, lower forgetting)")
    for variant, stride in (("", ""), ("last stride removed: ", "last stride removed: "), (DCL, "last stride removed: "),
                            (DCLM, "last stride removed: ")):
        for base in ("class-balanced", "instance-sampled"):
            for col in ("few", "open-set F"):
                for rule in ("NCM", "its classifier"):
                    d = diff((f"{variant}OLTR, two stages, its classifier", col), (f"{stride}{base} normalized softmax, {rule}", col))
                    if d is not None:
                        against = "baseline" if rule == "NCM" else "baseline's classifier"
                        out.append(f"- {variant}OLTR classifier - {base} {against}, {col}: {d:+.1f} (goal >= +5)")
    for base in ("episodic training, prototypes", "episodic training at 72 px (dense's input), prototypes"):
        d = diff(("dense classification + implanting (200 episodes)", "accuracy"), (base, "accuracy"))
        if d is not None:
            out.append(f"- dense + implanting - prototype baseline ({base}), 5-way 1-shot: {d:+.1f} (goal >= -1)")
    d = diff(("student: distill (MobileNetV2, 40 px)", "P@1"), ("teacher: default (MobileNetV2, 72 px)", "P@1"))
    if d is not None:
        out.append(f"- student - teacher: {d:+.1f} P@1 (goal >= -1)")
    return out


def implant_rows(runs: Path) -> List[Dict]:
    """Rows (recipe fewshot_dense, tag implant) from RUN/implant.json of the fewshot_dense runs under ``runs``."""
    out = []
    for path in sorted(runs.glob("fewshot_dense__*__s*/implant.json")):
        recipe, dataset, seed = path.parent.name.split("__")[:3]
        result = json.loads(path.read_text())
        out.append({"recipe": recipe, "dataset": dataset, "seed": int(seed[1:]), "tag": "implant",
                    **{k: v for k, v in result.items() if isinstance(v, (int, float))}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, nargs="+", help="JSON files of run_matrix rows (later files win)")
    ap.add_argument("--runs", type=Path, default=None, help="folder of the run folders, for the implant.json results")
    ap.add_argument("--out", type=Path, default=None, help="write the merged rows here")
    a = ap.parse_args()
    merged: Dict[tuple, Dict] = {}
    for path in a.results:
        for r in json.loads(path.read_text()):
            merged[(r["recipe"], r["dataset"], r.get("tag", ""), r["seed"])] = r
    for r in implant_rows(a.runs) if a.runs else []:
        merged[(r["recipe"], r["dataset"], r["tag"], r["seed"])] = r
    rows = list(merged.values())
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1))
    print(tables(rows))


if __name__ == "__main__":
    main()

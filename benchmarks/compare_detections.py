"""Paired comparison of two scene-benchmark runs: is B's AP above A's by more than the test scenes' sampling noise?

Both files come from ``benchmarks/scenes.py --save-detections`` on the same test scenes. For each localizer and task in
both, the same bootstrap resamples of the scenes (drawn with replacement) score A and B; the spread of B - A over them
gives a 95% interval of the difference (paired: a scene that is hard for both counts once).

    python benchmarks/scenes.py ... --save-detections runs/dets_a.json      # method A
    python benchmarks/scenes.py ... --save-detections runs/dets_b.json      # method B, same --scenes and --limit
    python benchmarks/compare_detections.py runs/dets_a.json runs/dets_b.json [--n-boot 2000]
"""
from __future__ import annotations

import argparse
import json
import os
from typing import List, Tuple

import numpy as np

from metricvision.metrics.detection import bootstrap_ap, detection_ap
from scenes import saved_detections


def compare(a: dict, b: dict, n_boot: int, seed: int = 0) -> List[Tuple[str, str, str, float, float, float, float, float]]:
    """Two ``--save-detections`` files -> rows (localizer, task, metric, A, B, 2.5% and 97.5% of B - A over the
    resamples, share of resamples with B > A) for every localizer and task in both, metric AP50 and AP50:95."""
    if a["n_test"] != b["n_test"] or os.path.normpath(a["test_scenes"]) != os.path.normpath(b["test_scenes"]):
        raise ValueError(f"the runs scored different test scenes: {a['test_scenes']} ({a['n_test']}) and "
                         f"{b['test_scenes']} ({b['n_test']})")
    rows = []
    for name, tasks in a["localizers"].items():
        for task, entry in tasks.items():
            other = b["localizers"].get(name, {}).get(task)
            if other is None:
                continue
            if entry["targets"] != other["targets"]:
                raise ValueError(f"{name} / {task}: the runs' targets differ")
            da, db = saved_detections(entry), saved_detections(other)
            full_a, full_b = detection_ap(*da), detection_ap(*db)
            sa, sb = bootstrap_ap(*da, n_boot=n_boot, seed=seed), bootstrap_ap(*db, n_boot=n_boot, seed=seed)
            for key, label in (("AP50", "AP50"), ("AP", "AP50:95")):
                d = sb[key] - sa[key]
                d = d[~np.isnan(d)]  # resamples without a target score neither run
                if not len(d):
                    raise ValueError(f"{name} / {task}: no resample has a target")
                rows.append((name, task, label, full_a[key], full_b[key], np.percentile(d, 2.5), np.percentile(d, 97.5),
                             float((d > 0).mean())))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="--save-detections file of method A")
    ap.add_argument("b", help="--save-detections file of method B")
    ap.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    args = ap.parse_args()
    with open(args.a) as fa, open(args.b) as fb:
        rows = compare(json.load(fa), json.load(fb), args.n_boot)
    print("| localizer | task | metric | A | B | B - A | 95% interval of B - A | share of resamples with B > A |")
    print("|---|---|---|---|---|---|---|---|")
    for name, task, metric, ap_a, ap_b, lo, hi, share in rows:
        print(f"| {name} | {task} | {metric} | {ap_a:.3f} | {ap_b:.3f} | {ap_b - ap_a:+.3f} | [{lo:+.3f}, {hi:+.3f}] "
              f"| {share:.3f} |")


if __name__ == "__main__":
    main()

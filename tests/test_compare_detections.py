"""benchmarks/compare_detections.py: the paired bootstrap of two scene-benchmark runs, end to end on written files."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from metricvision.metrics.detection import detection_ap, pairwise_iou

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_detections.py"


def run_file(path, boxes, scores, targets, scenes="runs/scenes/test"):
    found = [np.hstack([b, s[:, None]]).tolist() for b, s in zip(boxes, scores)]
    entry = {"boxes": found, "targets": [t.tolist() for t in targets]}
    path.write_text(json.dumps({"test_scenes": scenes, "n_test": len(targets),
                                "localizers": {"loc": {"image query": entry}}}))
    return path


def test_a_clearly_better_ranking_wins_and_other_scenes_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    targets, boxes = [], []
    for _ in range(40):
        t = rng.uniform(0, 200, (1, 2))
        t = np.hstack([t, t + 40])
        wrong = rng.uniform(300, 400, (3, 2))
        boxes.append(np.vstack([t + rng.normal(0, 2, (1, 4)), np.hstack([wrong, wrong + 40])]))
        targets.append(t)
    good = [pairwise_iou(b, t).max(1) for b, t in zip(boxes, targets)]  # the target's box first
    bad = [np.arange(len(b), dtype=float) for b in boxes]  # the target's box last
    a = run_file(tmp_path / "a.json", boxes, bad, targets)
    b = run_file(tmp_path / "b.json", boxes, good, targets, scenes="runs/scenes/test/")  # the same folder
    out = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b), "--n-boot", "200"], capture_output=True,
                         text=True, check=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| loc |")]
    assert [r[3].strip() for r in rows] == ["AP50", "AP50:95"]
    row = rows[0]
    ap_a, ap_b = float(row[4]), float(row[5])
    assert ap_a == round(detection_ap(boxes, bad, targets)["AP50"], 3) and ap_b == 1.0
    lo, hi = (float(x) for x in row[7].strip(" []").split(","))
    assert 0 < lo <= hi and float(row[8]) == 1.0  # B beats A on every resample
    c = run_file(tmp_path / "c.json", boxes, good, targets, scenes="elsewhere")
    err = subprocess.run([sys.executable, str(SCRIPT), str(a), str(c)], capture_output=True, text=True)
    assert err.returncode != 0 and "different test scenes" in err.stderr

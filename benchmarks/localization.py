"""Localization benchmark: find emoji pasted onto canvases among distractors.

Each canvas (white, 384 px) holds 1-3 copies of one test-split emoji (unseen identity,
vendor A, random scale 48-96 px) and 4 distractor emoji. The query is the same emoji
rendered by vendor B, or its name (text). Boxes come from the dense similarity map (peaks,
connected components, NMS). Reported: recall (ground-truth boxes matched by a predicted
box with IoU >= 0.5, greedy one-to-one) and precision (predicted boxes with IoU >= 0.5).

    python benchmarks/localization.py --checkpoint runs/text_align/image_model.safetensors
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from metricvision.data.emoji import load_emoji
from metricvision.kb.localize import box_iou, boxes_from_map, similarity_map, upsample
from metricvision.kb.model import ImageTextModel

Box = Tuple[float, float, float, float]


def make_canvas(target: np.ndarray, distractors: List[np.ndarray], copies: int, rng: np.random.Generator,
                size: int = 384, scale: Tuple[int, int] = (48, 96)) -> Tuple[np.ndarray, List[Box]]:
    """Paste ``copies`` of target and the distractors at random non-overlapping places; returns canvas and target boxes."""
    canvas = Image.new("RGB", (size, size), "white")
    placed: List[Box] = []
    gt: List[Box] = []
    for n, img in enumerate([target] * copies + distractors):
        for _ in range(200):
            s = int(rng.integers(scale[0], scale[1] + 1))
            x, y = int(rng.integers(0, size - s)), int(rng.integers(0, size - s))
            box = (x, y, x + s, y + s)
            if all(box_iou(box, b) == 0 for b in placed):
                break
        else:
            continue
        canvas.paste(Image.fromarray(img).resize((s, s), Image.LANCZOS), (x, y))
        placed.append(box)
        if n < copies:
            gt.append(box)
    return np.asarray(canvas), gt


def match(pred: List[Box], gt: List[Box], thr: float = 0.5) -> Tuple[int, int]:
    """Greedy one-to-one matching by IoU: (matched ground truths, predictions with IoU >= thr)."""
    used, matched = set(), 0
    for p in pred:
        best = max(((box_iou(p, g), j) for j, g in enumerate(gt) if j not in used), default=(0.0, -1))
        if best[0] >= thr:
            used.add(best[1])
            matched += 1
    return matched, matched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="image model from benchmarks/text_retrieval.py or `kb align`")
    ap.add_argument("--canvases", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--encode-side", type=int, default=768, help="canvas side the dense features are computed at")
    ap.add_argument("--rel-threshold", type=float, default=0.5)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    model = ImageTextModel.from_checkpoint(a.checkpoint)
    test = [s for s in load_emoji("test") if s.meta["tone"] == ""]
    by_vendor: Dict[int, Dict[str, np.ndarray]] = defaultdict(dict)
    names = {}
    for s in test:
        by_vendor[s.label][s.meta["vendor"]] = s.image
        names[s.label] = s.caption
    labels = [lab for lab, v in by_vendor.items() if len(v) >= 2]
    totals = {q: np.zeros(3) for q in ("other vendor image", "name (text)", "random boxes (baseline)")}  # matched, gt, predicted
    start = time.time()
    for _ in range(a.canvases):
        lab, *others = rng.choice(labels, size=5, replace=False)
        va, vb = rng.permutation(sorted(by_vendor[lab]))[:2]
        canvas, gt = make_canvas(by_vendor[lab][va], [by_vendor[o][va] for o in others], int(rng.integers(1, 4)), rng)
        dense = model.encode_dense(Image.fromarray(canvas).resize((a.encode_side, a.encode_side)), max_side=a.encode_side)
        queries = {"other vendor image": model.encode_images([by_vendor[lab][vb]])[0],
                   "name (text)": model.encode_text([names[lab]])[0]}
        for qname, q in queries.items():
            heat = upsample(similarity_map(q, dense), canvas.shape[:2])
            pred = [tuple(b.as_list()[:4]) for b in boxes_from_map(heat, rel_threshold=a.rel_threshold, max_boxes=len(gt))]
            m, _ = match(pred, gt)
            totals[qname] += (m, len(gt), len(pred))
        side = rng.integers(48, 97, size=len(gt))
        rand = [(x, y, x + s, y + s) for s, x, y in zip(side, rng.integers(0, 384 - side), rng.integers(0, 384 - side))]
        totals["random boxes (baseline)"] += (match(rand, gt)[0], len(gt), len(rand))
    print(f"{a.canvases} canvases of 384 px (features at {a.encode_side} px), 1-3 targets + 4 distractors, unseen identities ({time.time() - start:.0f} s)")
    print("| query | boxes with IoU >= 0.5 (recall) | precision | targets |\n|---|---|---|---|")
    for qname, (m, g, p) in totals.items():
        print(f"| {qname} | {m / g:.3f} | {m / max(p, 1):.3f} | {int(g)} |")


if __name__ == "__main__":
    main()

"""Localization benchmark: find emoji pasted onto canvases among distractors, scored by box AP.

Each canvas (white, 384 px) holds 1-3 copies of one test-split emoji (unseen identity,
vendor A, random scale 48-96 px) and 4 distractor emoji. The query is the same emoji
rendered by vendor B, or its name (text). Boxes come from the dense similarity map (peaks,
connected components, NMS), at most ``--max-boxes`` per canvas, scored by their peak.
The method is never told how many targets a canvas holds nor their sizes: the ground
truth is used only for scoring, and the thresholds (region fraction, NMS) are chosen by
AP50 on validation canvases built from other test identities than the scored canvases.
Reported: COCO box AP50 and AP50:95 over all (canvas, query) pairs as one category
(metricvision.metrics.detection, equal to pycocotools).

    python benchmarks/localization.py --checkpoint runs/text_align/image_model.safetensors
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from metricvision.data.emoji import load_emoji
from metricvision.kb.localize import box_iou, boxes_from_map, similarity_map, tune_box_params, upsample
from metricvision.kb.model import ImageTextModel
from metricvision.metrics.detection import detection_ap

Box = Tuple[float, float, float, float]
QUERIES = ("other vendor image", "name (text)")
GRID = {"rel_threshold": (0.3, 0.45, 0.6, 0.75), "iou_threshold": (0.1, 0.3, 0.5)}


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


def heat_maps(model: ImageTextModel, by_vendor: Dict[int, Dict[str, np.ndarray]], names: Dict[int, str],
              labels: Sequence[int], n: int, rng: np.random.Generator, encode_side: int
              ) -> Tuple[Dict[str, List[np.ndarray]], List[np.ndarray]]:
    """Build ``n`` canvases from ``labels``; per query kind the (384, 384) maps, and the target boxes (m, 4)."""
    heats: Dict[str, List[np.ndarray]] = {q: [] for q in QUERIES}
    gts = []
    for _ in range(n):
        lab, *others = rng.choice(labels, size=5, replace=False)
        va, vb = rng.permutation(sorted(by_vendor[lab]))[:2]
        canvas, gt = make_canvas(by_vendor[lab][va], [by_vendor[o][va] for o in others], int(rng.integers(1, 4)), rng)
        dense = model.encode_dense(Image.fromarray(canvas).resize((encode_side, encode_side)), max_side=encode_side)
        queries = dict(zip(QUERIES, (model.encode_images([by_vendor[lab][vb]])[0], model.encode_text([names[lab]])[0])))
        for qname, q in queries.items():
            heats[qname].append(upsample(similarity_map(q, dense), canvas.shape[:2]))
        gts.append(np.array(gt, np.float64).reshape(-1, 4))
    return heats, gts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="image model from benchmarks/text_retrieval.py or `kb align`")
    ap.add_argument("--canvases", type=int, default=150, help="scored canvases")
    ap.add_argument("--val-canvases", type=int, default=50, help="canvases the thresholds are chosen on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--encode-side", type=int, default=768, help="canvas side the dense features are computed at")
    ap.add_argument("--max-boxes", type=int, default=10, help="boxes kept per canvas (ranked by score)")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    model = ImageTextModel.from_checkpoint(a.checkpoint)
    test = [s for s in load_emoji("test") if s.meta["tone"] == ""]
    by_vendor: Dict[int, Dict[str, np.ndarray]] = defaultdict(dict)
    names = {}
    for s in test:
        by_vendor[s.label][s.meta["vendor"]] = s.image
        names[s.label] = s.caption
    labels = sorted(lab for lab, v in by_vendor.items() if len(v) >= 2)
    val_labels, test_labels = labels[::4], [lab for i, lab in enumerate(labels) if i % 4]  # disjoint identities
    start = time.time()
    val_heats, val_gts = heat_maps(model, by_vendor, names, val_labels, a.val_canvases, rng, a.encode_side)
    test_heats, test_gts = heat_maps(model, by_vendor, names, test_labels, a.canvases, rng, a.encode_side)
    rows = []
    for qname in QUERIES:
        params, val_ap = tune_box_params(val_heats[qname], val_gts, {"max_boxes": [a.max_boxes], **GRID})
        found = [np.array([b.as_list() for b in boxes_from_map(h, **params)]).reshape(-1, 5) for h in test_heats[qname]]
        res = detection_ap([f[:, :4] for f in found], [f[:, 4] for f in found], test_gts)
        rows.append((qname, res, f"rel {params['rel_threshold']}, NMS {params['iou_threshold']} (val AP50 {val_ap:.3f})"))
    rand = []
    for _ in range(a.canvases):  # random boxes from the generator's size range, random scores
        side = rng.integers(48, 97, size=a.max_boxes)
        xy = rng.integers(0, 384 - side[:, None], size=(a.max_boxes, 2))
        rand.append(np.hstack([xy, xy + side[:, None]]).astype(np.float64))
    res = detection_ap(rand, [rng.random(a.max_boxes) for _ in rand], test_gts)
    rows.append(("random boxes (baseline)", res, "-"))
    n_targets = sum(len(g) for g in test_gts)
    print(f"{a.canvases} canvases of 384 px (features at {a.encode_side} px), 1-3 targets + 4 distractors, unseen identities, "
          f"{n_targets} targets, <= {a.max_boxes} boxes per canvas; thresholds chosen on {a.val_canvases} validation canvases "
          f"of other identities ({time.time() - start:.0f} s)")
    print("| query | AP50 | AP50:95 | thresholds (chosen on validation) |\n|---|---|---|---|")
    for qname, res, chosen in rows:
        print(f"| {qname} | {res['AP50']:.3f} | {res['AP']:.3f} | {chosen} |")


if __name__ == "__main__":
    main()

"""Scene retrieval from a small object: whole-image embeddings vs region embeddings in the KB.

The gallery is the test scenes (unseen emoji pasted onto held-out photographs, COCO
annotations from `metricvision scenes build`), put into a knowledge base exactly as
`metricvision kb build --regions` does (whole image + regions of a multi-scale grid, or
of a trained detector's proposals with --detector). Each identity that is some scene's
target is one query, by image (another vendor's rendering) and by name; the relevant
scenes are all scenes where that identity appears (as target or distractor). Printed:
mAP (revisitop's trapezoid AP) ranking scenes by the whole-image score, by the best
region score, and by the KB's rule (max of both); and, over relevant scenes in each
query's top 10, how often the best region's box holds an instance (its centre inside the
box) and overlaps one at IoU >= 0.5. The ground truth is used for scoring only.

    metricvision scenes build --split test --n 300 --out runs/scenes/test \
        --backgrounds /usr/share/backgrounds/mate/nature
    python benchmarks/scene_retrieval.py --scenes runs/scenes/test \
        --checkpoint runs/text_align/image_model.safetensors
    # an identity model (`kb from-run`, image queries only) over the proposals of a detector trained on another model
    python benchmarks/scene_retrieval.py --checkpoint runs/scene_aug_e24/image_model.safetensors \
        --detector runs/detector_big.safetensors --region-embedding model \
        --detector-model runs/text_align/image_model.safetensors [--refiner runs/refiner.safetensors]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from metricvision.data import Sample
from metricvision.kb.model import ImageTextModel
from metricvision.kb.regions import (REGION_EMBEDDINGS, add_regions, best_regions, enable_regions, kb_proposer, load_regions,
                                     merge_with_regions)
from metricvision.kb.store import KnowledgeBase
from metricvision.kb.views import encode_object_queries
from metricvision.metrics.revisited import mean_average_precision

RULES = ("whole image", "regions", "max(whole, regions)")


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two x0, y0, x1, y1 boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def evaluate(kb: KnowledgeBase, queries: np.ndarray, relevant: List[Dict[int, List[np.ndarray]]]) -> Dict[str, Dict[str, float]]:
    """mAP per ranking rule and box quality of the best region, for (Q, D) queries.

    Args:
        relevant: per query, relevant item id -> the query object's (4,) boxes in that scene.
    """
    n, table = len(kb), load_regions(kb.path)
    whole_s, whole_i = kb.search(queries, n)
    positions: Dict[str, List[np.ndarray]] = {r: [] for r in RULES}
    centre, iou50, found = 0, 0, 0
    for q, rel in enumerate(relevant):
        regions = best_regions(table, queries[q], per_item=1)
        region_rank = np.array(sorted(regions, key=lambda i: -regions[i][0]["score"]), np.int64)
        _, merged = merge_with_regions(whole_s[q], whole_i[q], regions, n)
        for rule, ranking in zip(RULES, (whole_i[q], region_rank, merged)):
            positions[rule].append(np.flatnonzero(np.isin(ranking, list(rel))))
        for i in merged[:10]:
            if int(i) in rel:
                box = np.array(regions[int(i)][0]["box"])
                cx, cy = [(g[0] + g[2]) / 2 for g in rel[int(i)]], [(g[1] + g[3]) / 2 for g in rel[int(i)]]
                centre += any(box[0] <= x <= box[2] and box[1] <= y <= box[3] for x, y in zip(cx, cy))
                iou50 += any(box_iou(box, g) >= 0.5 for g in rel[int(i)])
                found += 1
    out = {rule: {"mAP": mean_average_precision(positions[rule], [np.empty(0)] * len(relevant), kappas=(1,))["map"]}
           for rule in RULES}
    out["best region box"] = {"centre inside": centre / max(found, 1), "IoU>=0.5": iou50 / max(found, 1),
                              "relevant hits in top 10": float(found)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", default="runs/scenes/test", help="folder with annotations.json from `scenes build`")
    ap.add_argument("--checkpoint", default="runs/text_align/image_model.safetensors", help="image model from `kb align`")
    ap.add_argument("--detector", help="query_detector weights: regions from its proposals instead of the grid")
    ap.add_argument("--region-embedding", choices=REGION_EMBEDDINGS, default="detector",
                    help="with --detector: regions embedded by the detector or by the image model on their crops")
    ap.add_argument("--detector-model", help="with --detector and --region-embedding model: the image model the detector "
                    "was trained on, when it is not --checkpoint (e.g. a `kb from-run` identity model)")
    ap.add_argument("--refiner", help="with --detector and --region-embedding model: box refiner weights "
                    "(`metricvision detector refiner`) that regress each region's box from its crop")
    ap.add_argument("--query-views", action="store_true",
                    help="embed image queries as the mean over their views (metricvision.kb.views)")
    ap.add_argument("--limit", type=int, default=0, help="use the first N scenes (0: all)")
    ap.add_argument("--kb", help="KB folder to build (default: a temporary one)")
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args()

    root = Path(a.scenes)
    coco = json.loads((root / "annotations.json").read_text())
    images = coco["images"][: a.limit or None]
    model = ImageTextModel.from_checkpoint(a.checkpoint)
    kb_dir = Path(a.kb or tempfile.mkdtemp(prefix="scene_kb_")) / "kb"
    start = time.time()
    kb = KnowledgeBase.create(kb_dir, model)
    samples = [Sample(image=str(root / im["file_name"])) for im in images]
    ids = kb.add(samples, image_root=root)
    whole_s = time.time() - start
    enable_regions(kb.path, a.detector, a.region_embedding, a.detector_model, a.refiner)
    n_regions = add_regions(kb.path, ids, samples, kb_proposer(kb.path, model))
    region_s = time.time() - start - whole_s

    item_of = {im["id"]: i for im, i in zip(images, ids)}
    boxes: Dict[int, Dict[int, List[np.ndarray]]] = {}
    for ann in coco["annotations"]:
        if ann["image_id"] in item_of:
            x, y, w, h = ann["bbox"]
            boxes.setdefault(ann["identity"], {}).setdefault(item_of[ann["image_id"]], []).append(np.array([x, y, x + w, y + h]))
    query_meta = {im["query"]["identity"]: im["query"] for im in images}
    identities = sorted(i for i in query_meta if i in boxes)  # a scene may hold 0 instances of its target
    relevant = [boxes[i] for i in identities]
    queries = {
        "image query": encode_object_queries(model, [root / query_meta[i]["file_name"] for i in identities], views=a.query_views),
    }
    if model.card.text_model:  # a `kb from-run` identity model has no text side: image queries only
        queries["name query"] = model.encode_text([query_meta[i]["name"] for i in identities])
    print(f"{len(images)} test scenes, {len(identities)} query identities ({np.mean([len(r) for r in relevant]):.2f} "
          f"relevant scenes each); {n_regions} regions ({n_regions / len(images):.0f} per scene, "
          f"{'detector' if a.detector else 'grid'}); embedding: whole {whole_s:.0f} s, regions {region_s:.0f} s")
    results = {task: evaluate(kb, q.numpy(), relevant) for task, q in queries.items()}
    print("\n| query | " + " | ".join(f"mAP {r}" for r in RULES) + " | regions / whole | best box: centre in / IoU>=0.5 |")
    print("|---" * (len(RULES) + 3) + "|")
    for task, r in results.items():
        ratio = r["regions"]["mAP"] / max(r["whole image"]["mAP"], 1e-9)
        b = r["best region box"]
        print(f"| {task} | " + " | ".join(f"{r[rule]['mAP']:.3f}" for rule in RULES)
              + f" | {ratio:.2f}x | {b['centre inside']:.2f} / {b['IoU>=0.5']:.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

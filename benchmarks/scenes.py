"""Scene benchmark: registered localizers side by side on COCO scenes (emoji on photographs), box AP.

Scenes come from `metricvision scenes build` (test: unseen identities on held-out
backgrounds; val: other training identities, where each localizer chooses its
thresholds). Three tasks, each one query per scene, all (scene, query) pairs pooled as
one category: (a) the target rendered by another vendor, (b) the target's name, (c) the
name of the target's emoji category (every object of that category is a target); (a) only
for an image model without text (`metricvision kb from-run`). The
localizers never see the ground truth; it is used for scoring (COCO AP50, AP50:95, and
AP50:95 per mask-area range: small < 32^2, medium, large > 96^2 px), and AP50 on the
cluttered scenes (>= 8 objects), and the pointing game (the best box's centre within 15 px of
a target's mask, over the scenes with a target; Zhang et al. 2016). Time per image and query, median, with its split into
stages: the query-independent work (``prepare``: backbone, head, proposals, crops) and the
per-query work (``boxes``).

    B=/usr/share/backgrounds/mate/nature   # Debian package mate-backgrounds
    metricvision scenes build --split train --n 500 --out runs/scenes/train --backgrounds $B
    metricvision scenes build --split val --n 60 --out runs/scenes/val --backgrounds $B
    metricvision scenes build --split test --n 300 --out runs/scenes/test --backgrounds $B
    metricvision detector train --scenes runs/scenes/train --steps 1200 --crop-steps 800 \
        --checkpoint runs/text_align/image_model.safetensors --out runs/detector.safetensors
    metricvision detector train --scenes runs/scenes/train --steps 1200 --crop-steps 0 --prime \
        --checkpoint runs/text_align/image_model.safetensors --out runs/detector_primed.safetensors
    metricvision detector train --scenes runs/scenes/train --max-scenes 100 --steps 300 --weak \
        --checkpoint runs/text_align/image_model.safetensors --out runs/detector_weak.safetensors
    python benchmarks/scenes.py --checkpoint runs/text_align/image_model.safetensors --scenes runs/scenes \
        --detector runs/detector.safetensors --primed-detector runs/detector_primed.safetensors \
        --weak-detector runs/detector_weak.safetensors [--mask-ap] [--oracle] [--errors]
    python benchmarks/scenes.py --checkpoint runs/text_align/image_model.safetensors --scenes runs/scenes \
        --detector runs/detector.safetensors --localizers query_detector_model_crops [--option side=96] [--query-views] \
        [--option references=emoji:train]   # CSLS hubness correction against the clean training renderings
        [--option "references=captions:emoji:train?hold_out=scene_val"]   # or against the training names (aligned models)
        [--option context=auto --val runs/scenes_val400]   # context rescoring, fitted on 400 val scenes
        [--bootstrap 1000] [--save-detections runs/dets_a.json]   # AP50 intervals; detections for compare_detections.py
        [--option runtime=onnx]   # the detector's pass and the crops run by ONNX Runtime: the same boxes, faster
        [--option runtime=onnx_int8]   # the crops' embeddings in 8 bits (calibrated on the first 8 images' crops)
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
import yaml
from PIL import Image

from metricvision.kb.model import ImageTextModel
from metricvision.kb.references import load_references
from metricvision.kb.store import write_json_atomic
from metricvision.localization.localizers import LOCALIZERS
from metricvision.localization.train import SceneSet, image_tensor, read_scenes
from metricvision.kb.views import encode_object_queries
from metricvision.data.scenes import rle_decode
from metricvision.metrics.detection import (bootstrap_ap, detection_ap, encode_masks, mask_ap, pairwise_iou,
                                            pointing_game)
from metricvision.metrics.detection_errors import ERROR_TYPES, detection_errors

TASKS = ("image query", "name query", "category (name)")
CLUTTERED = 8  # objects in a scene from which it counts as cluttered


def task_queries(model: ImageTextModel, scenes: SceneSet, views: bool = False) -> Dict[str, torch.Tensor]:
    """(n_scenes, D) query embeddings per task (image queries only for a model without text); ``views``: image queries
    as the mean over their ``object_views``."""
    out = {"image query": encode_object_queries(model, [q["file_name"] for q in scenes.queries], views=views)}
    if model.card.text_model:
        out.update({"name query": model.encode_text([q["name"] for q in scenes.queries]),
                    "category (name)": model.encode_text([scenes.category_names[q["category_id"]] for q in scenes.queries])})
    return out


def task_targets(scenes: SceneSet, task: str) -> List[np.ndarray]:
    """Per scene, the boolean mask of its objects that count as targets for the task."""
    if task == "category (name)":
        return [c == q["category_id"] for c, q in zip(scenes.categories, scenes.queries)]
    return [i == q["identity"] for i, q in zip(scenes.identities, scenes.queries)]


def stage_ms(loc, images: List[torch.Tensor]) -> Dict[str, float]:
    """Median ms per stage of a detector localizer's ``prepare`` on the images: backbone, head (one stage,
    "backbone + head", under ``--option runtime=onnx`` or ``onnx_int8``), crops (two-stage only)."""
    times: Dict[str, List[float]] = {}
    for image in images:
        t0 = time.perf_counter()
        if getattr(loc, "runtime", "torch") != "torch":
            _, boxes, _ = loc.predict(image[None])
            times.setdefault("backbone + head", []).append(time.perf_counter() - t0)
        else:
            feats = loc.detector.features(image[None])
            t1 = time.perf_counter()
            with torch.no_grad():
                _, boxes, _ = loc.detector.head(feats, tuple(image.shape[-2:]), primes=torch.ones(
                    1, loc.detector.embedder.dim) if loc.detector.primed else None)
            times.setdefault("backbone", []).append(t1 - t0)
            times.setdefault("head", []).append(time.perf_counter() - t1)
        if getattr(loc, "proposals", None):
            t2 = time.perf_counter()
            loc.embed_crops(image, boxes[0].reshape(-1, 4)[: loc.proposals])
            times.setdefault("crops", []).append(time.perf_counter() - t2)
    return {k: round(1000 * float(np.median(v)), 1) for k, v in times.items()}


def box_masks(boxes: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(n, 4+) boxes -> (n, H, W) filled-box masks (the masks of a method that gives boxes only)."""
    out = np.zeros((len(boxes), *size), bool)
    for k, (x0, y0, x1, y1) in enumerate(np.round(boxes[:, :4]).astype(int)):
        out[k, max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return out


def masks_of(loc, prepared, query: torch.Tensor, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """One (1, D) query -> masks (n, H, W) and scores (n,): the localizer's masks (``instances``) or its filled boxes."""
    if hasattr(loc, "instances"):
        masks, boxes = loc.instances(prepared, query)[0]
        return masks, boxes[:, 4]
    boxes = loc.boxes(prepared, query)[0]
    return box_masks(boxes, size), boxes[:, 4]


def target_masks(scenes: SceneSet, task: str, n: int) -> List[np.ndarray]:
    """Per scene, (m, H, W) masks of the task's targets (from the pasted alpha)."""
    out = []
    for rles, t in zip(scenes.segmentations[:n], task_targets(scenes, task)[:n]):
        size = tuple(rles[0]["size"]) if rles else (1, 1)
        out.append(np.array([rle_decode(r) for r, keep in zip(rles, t) if keep], bool).reshape(-1, *size))
    return out


def best_point(boxes: np.ndarray) -> Tuple[float, float] | None:
    """(n, 5) scored boxes -> the centre (x, y) of the best one (the localizer's point for the pointing game), or None."""
    if not len(boxes):
        return None
    x0, y0, x1, y1 = boxes[int(np.argmax(boxes[:, 4])), :4]
    return (x0 + x1) / 2, (y0 + y1) / 2


def saved_detections(entry: Dict[str, List[Any]]) -> Tuple[List[np.ndarray], List[np.ndarray], List[np.ndarray]]:
    """One localizer and task as ``--save-detections`` writes it ({"boxes": per scene (n, 5) scored boxes, "targets":
    per scene (m, 4)}) -> per scene boxes (n, 4), scores (n,), targets (m, 4): ``detection_ap``'s arguments."""
    boxes = [np.asarray(f, np.float64).reshape(-1, 5) for f in entry["boxes"]]
    return [b[:, :4] for b in boxes], [b[:, 4] for b in boxes], [np.asarray(t, np.float64).reshape(-1, 4) for t in entry["targets"]]


def oracle_ap50(locs: Dict[str, Any], scenes: SceneSet, queries: Dict[str, torch.Tensor], n: int) -> Dict[str, float]:
    """Diagnostic, not a method: AP50 per task when the ground-truth boxes of all objects are the proposals,
    scored by the cosine of their crops' embeddings (``embed_crops``) with the query (the ceiling of the second stage)."""
    embed = locs[TASKS[0]].embed_crops  # crop embeddings are query-independent; each task mixes its own cosines
    emb = [embed(image_tensor(p), torch.from_numpy(b).float()) for p, b in zip(scenes.images[:n], scenes.boxes)]
    out = {}
    for task in queries:
        targets = task_targets(scenes, task)[:n]
        scores = [locs[task].cosines(e, queries[task][i : i + 1])[:, 0].numpy() for i, e in enumerate(emb)]
        out[task] = round(detection_ap(scenes.boxes[:n], scores, [b[t] for b, t in zip(scenes.boxes, targets)])["AP50"], 3)
    return out


def print_errors(name: str, scenes: SceneSet, found: Dict[str, List[np.ndarray]], n: int,
                 covered: List[np.ndarray]) -> None:
    """Print each task's AP50 breakdown (``detection_errors``) and, given per scene the (m,) objects some proposal
    covers at IoU 0.5, the proposals' recall of the targets."""
    print(f"| {name} | AP50 | " + " | ".join(f"dAP {k}" for k in ERROR_TYPES) + " | errors (targets missed) | proposal recall |")
    print("|---" * (len(ERROR_TYPES) + 4) + "|")
    for task, boxes in found.items():
        targets = task_targets(scenes, task)[:n]
        out = detection_errors([f[:, :4] for f in boxes], [f[:, 4] for f in boxes], [b[t] for b, t in zip(scenes.boxes, targets)],
                               [b[~t] for b, t in zip(scenes.boxes, targets)])
        recall = f"{np.concatenate([c[t] for c, t in zip(covered, targets)]).mean():.3f}" if covered else ""
        print(f"| {task} | {out['AP50']:.3f} | " + " | ".join(f"{out['dAP'][k]:+.3f}" for k in ERROR_TYPES)
              + " | " + ", ".join(f"{k} {v}" for k, v in out["count"].items()) + f" | {recall} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="image model from `kb align` (or `kb from-run`: image queries only)")
    ap.add_argument("--scenes", required=True, help="folder with val/ and test/ scene folders")
    ap.add_argument("--localizers", nargs="*", default=None, help="registered names (default: all that can run)")
    ap.add_argument("--detector", help="weights for query_detector, query_detector_crops and query_detector_model_crops "
                    "(`metricvision detector train`)")
    ap.add_argument("--primed-detector", help="weights for query_detector_primed (`metricvision detector train --prime`)")
    ap.add_argument("--primer", help="crop primer weights for query_detector_primed_crops (`metricvision detector primer`; "
                    "its proposals come from --detector)")
    ap.add_argument("--weak-detector", help="weights for peak_response (`metricvision detector train --weak`)")
    ap.add_argument("--max-boxes", type=int, default=20, help="boxes per query (default 20)")
    ap.add_argument("--oracle", action="store_true",
                    help="also print the two-stage localizers' AP50 with the ground-truth boxes as proposals (a diagnostic)")
    ap.add_argument("--errors", action="store_true",
                    help="also print where each task's AP50 goes (a simplified TIDE breakdown: dAP per error type) and, "
                         "for two-stage localizers, the proposals' recall of the targets at IoU 0.5")
    ap.add_argument("--mask-ap", action="store_true",
                    help="also print mask AP50 per task (filled boxes for localizers without masks; pycocotools)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a constructor argument of the localizers run, e.g. side=96 (repeatable)")
    ap.add_argument("--query-views", action="store_true",
                    help="embed image queries as the mean over their views (rotations, blur, brightness; "
                         "metricvision.kb.views)")
    ap.add_argument("--limit", type=int, default=0, help="score only the first N test scenes (0: all)")
    ap.add_argument("--val-limit", type=int, default=0, help="fit on the first N validation scenes only (0: all)")
    ap.add_argument("--val", help="the validation scene folder (default: SCENES/val), e.g. a larger one for "
                    "`--option context=auto`")
    ap.add_argument("--bootstrap", type=int, default=0, metavar="N",
                    help="also print each task's 95%% interval of AP50 and AP50:95 over N bootstrap resamples of the test "
                         "scenes (0: none)")
    ap.add_argument("--save-detections", metavar="JSON",
                    help="write every localizer's boxes per task and test scene, with the targets, for a paired comparison "
                         "of two runs (benchmarks/compare_detections.py)")
    a = ap.parse_args()
    options = {}
    for item in a.option:
        if "=" not in item:
            ap.error(f"--option expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        options[key] = yaml.safe_load(value)
    torch.set_num_threads(2)
    model = ImageTextModel.from_checkpoint(a.checkpoint)
    val, test = read_scenes(a.val or f"{a.scenes}/val"), read_scenes(f"{a.scenes}/test")
    n_test, n_val = a.limit or len(test.images), a.val_limit or len(val.images)
    weights = {"query_detector": a.detector, "query_detector_crops": a.detector, "query_detector_model_crops": a.detector,
               "query_detector_primed": a.primed_detector,
               "query_detector_primed_crops": a.detector if a.primer else None,
               "peak_response": a.weak_detector, "peak_crops": a.weak_detector}
    names = a.localizers or [n for n in LOCALIZERS.names() if n not in weights or weights[n]]
    if "references" in options:  # embedded once, shared by every task's localizer
        options["references"] = load_references(options["references"], model)
    val_q, test_q = task_queries(model, val, a.query_views), task_queries(model, test, a.query_views)
    tasks = list(test_q)  # without a text model, image queries only
    saved: Dict[str, Dict[str, Any]] = {}
    for name in names:
        extra = {"weights": weights[name], **options} if name in weights else dict(options)
        if name == "query_detector_primed_crops":
            extra["primer"] = a.primer
        locs = {task: LOCALIZERS.create(name, model=model, max_boxes=a.max_boxes, **extra) for task in tasks}
        first = locs[tasks[0]]  # prepared images are query-independent: one forward pass serves every task
        val_prep = [first.prepare(image_tensor(p)) for p in val.images[:n_val]]
        chosen = {}
        for task, loc in locs.items():
            targets = task_targets(val, task)[:n_val]
            chosen[task] = loc.fit(val_prep, val_q[task][:n_val], [b[t] for b, t in zip(val.boxes, targets)])
        found: Dict[str, List[np.ndarray]] = {task: [] for task in tasks}
        found_masks: Dict[str, List[Tuple[List[dict], np.ndarray]]] = {task: [] for task in tasks}
        seconds, covered = [], []
        for i in range(n_test):
            image = image_tensor(test.images[i])
            start = time.perf_counter()  # one image, one query: what a user waits for
            prepared = first.prepare(image)
            middle = time.perf_counter()
            found[tasks[0]].append(first.boxes(prepared, test_q[tasks[0]][i : i + 1])[0])
            seconds.append((middle - start, time.perf_counter() - middle))
            if a.errors and getattr(first, "proposals", None):
                covered.append(pairwise_iou(test.boxes[i], prepared[0].numpy()).max(1, initial=0.0) >= 0.5)
            for task in tasks[1:]:
                found[task].append(locs[task].boxes(prepared, test_q[task][i : i + 1])[0])
            for task in tasks if a.mask_ap else ():
                masks, scores = masks_of(locs[task], prepared, test_q[task][i : i + 1], tuple(image.shape[-2:]))
                found_masks[task].append((encode_masks(masks), scores))
        if a.mask_ap:
            print(f"{name} mask AP50:", {task: round(mask_ap([m for m, _ in found_masks[task]], [sc for _, sc in found_masks[task]],
                                                              target_masks(test, task, n_test))["AP50"], 3) for task in tasks})
        if a.oracle and hasattr(first, "embed_crops"):
            print(f"{name} AP50 with ground-truth boxes as proposals (diagnostic):", oracle_ap50(locs, test, test_q, n_test))
        if a.errors:
            print_errors(name, test, found, n_test, covered)
        if name.startswith("query_detector"):
            print(f"{name} stages (median ms, 20 images):", stage_ms(first, [image_tensor(p) for p in test.images[:20]]))
        rows = []
        cluttered = np.array([len(b) >= CLUTTERED for b in test.boxes[:n_test]])
        for task in tasks:
            targets = task_targets(test, task)[:n_test]
            gt = [b[t] for b, t in zip(test.boxes, targets)]
            res = detection_ap([f[:, :4] for f in found[task]], [f[:, 4] for f in found[task]], gt,
                               gt_areas=[r[t] for r, t in zip(test.areas, targets)])
            sub = np.flatnonzero(cluttered)
            res["AP50_cluttered"] = detection_ap([found[task][i][:, :4] for i in sub], [found[task][i][:, 4] for i in sub],
                                                 [gt[i] for i in sub])["AP50"]
            res["pointing"] = pointing_game([best_point(f) for f in found[task]], target_masks(test, task, n_test))["pointing"]
            rows.append((task, res, chosen[task], sum(int(t.sum()) for t in targets)))
            saved.setdefault(name, {})[task] = {"boxes": [f.tolist() for f in found[task]], "targets": [g.tolist() for g in gt]}
        ms = 1000 * np.median(np.array(seconds), axis=0)
        print(f"\n{name}: {n_test} test scenes of {Image.open(test.images[0]).size[0]} px ({int(cluttered.sum())} cluttered, "
              f">= {CLUTTERED} objects), fitted on {n_val} val scenes, <= {a.max_boxes} boxes per query, "
              f"{torch.get_num_threads()} threads; per image and query (median): {ms.sum():.0f} ms = "
              f"{ms[0]:.0f} ms prepare (query-independent) + {ms[1]:.0f} ms boxes (per query)")
        print("| task | AP50 | AP50:95 | AP small | AP medium | AP large | AP50 cluttered | pointing | targets | chosen on val |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for task, r, ch, n in rows:
            print(f"| {task} | {r['AP50']:.3f} | {r['AP']:.3f} | {r['AP_small']:.3f} | {r['AP_medium']:.3f} | {r['AP_large']:.3f} "
                  f"| {r['AP50_cluttered']:.3f} | {r['pointing']:.3f} | {n} | {ch} |")
        for task in tasks if a.bootstrap else ():
            b = bootstrap_ap(*saved_detections(saved[name][task]), n_boot=a.bootstrap)
            print(f"{name} {task}: 95% interval over {a.bootstrap} bootstrap resamples of the test scenes: AP50 "
                  f"[{np.nanpercentile(b['AP50'], 2.5):.3f}, {np.nanpercentile(b['AP50'], 97.5):.3f}], AP50:95 "
                  f"[{np.nanpercentile(b['AP'], 2.5):.3f}, {np.nanpercentile(b['AP'], 97.5):.3f}]")
    if a.save_detections:
        write_json_atomic(a.save_detections, {"test_scenes": f"{a.scenes}/test", "n_test": n_test, "localizers": saved})


if __name__ == "__main__":
    main()

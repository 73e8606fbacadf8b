"""COCO-style average precision of boxes ranked by score (AP50, AP75, AP50:95, per size).

A re-implementation of pycocotools' ``COCOeval`` for boxes without crowd regions, tested
to equal it: per image and category, detections (best first, at most ``max_dets``) are
matched greedily to the unmatched ground truth of highest IoU >= t; ground truths outside
an area range are ignored, as are unmatched detections outside it; precision is made
monotone and read at 101 recall points; AP is the mean over IoU thresholds, recall
points and categories that have ground truth.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
COCO_AREAS: Dict[str, Tuple[float, float]] = {
    "all": (0.0, 1e10), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e10)}


def intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection areas of (n, 4) and (m, 4) (x0, y0, x1, y1) boxes -> (n, m)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    return iw * ih


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (n, 4) and (m, 4) (x0, y0, x1, y1) boxes -> (n, m)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    inter = intersections(a, b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _match(ious: np.ndarray, gt_ignore: np.ndarray, thresholds: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """COCO greedy matching. ious (n_det, n_gt), gts sorted non-ignored first -> det matched gt index (T, n_det), -1 if none."""
    det_gt = -np.ones((len(thresholds), ious.shape[0]), np.int64)
    for ti, t in enumerate(thresholds):
        taken = np.zeros(ious.shape[1], bool)
        for d in range(ious.shape[0]):
            best, m = min(t, 1 - 1e-10), -1
            for g in range(ious.shape[1]):
                if taken[g]:
                    continue
                if m > -1 and not gt_ignore[m] and gt_ignore[g]:
                    break  # a match with a counted ground truth beats any ignored one
                if ious[d, g] < best:
                    continue
                best, m = ious[d, g], g
            if m > -1:
                det_gt[ti, d] = m
                taken[m] = True
    return det_gt


def detection_ap(
    pred_boxes: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    pred_labels: Optional[Sequence[np.ndarray]] = None,
    gt_labels: Optional[Sequence[np.ndarray]] = None,
    gt_areas: Optional[Sequence[np.ndarray]] = None,
    max_dets: int = 100,
    area_ranges: Mapping[str, Tuple[float, float]] = COCO_AREAS,
) -> Dict[str, float]:
    """COCO box AP over a set of images (what ``COCOeval.summarize`` prints as AP lines).

    Args:
        pred_boxes: per image, (n_i, 4) detected boxes (x0, y0, x1, y1).
        pred_scores: per image, (n_i,) scores; higher ranks first (ties keep input order).
        gt_boxes: per image, (m_i, 4) ground-truth boxes.
        pred_labels: per image, (n_i,) category ids (default: one category).
        gt_labels: per image, (m_i,) category ids (default: one category).
        gt_areas: per image, (m_i,) areas that decide the size range (COCO uses the mask
            area; default: the box area).
        max_dets: detections kept per image and category, best first.
        area_ranges: name -> [lo, hi] area range; "all" gives AP, AP50 and AP75.

    Returns:
        {"AP": AP50:95, "AP50", "AP75", "AP_<range>" per other range}; -1 where no
        ground truth counts (as COCOeval).
    """
    n = len(gt_boxes)
    if len(pred_boxes) != n or len(pred_scores) != n:
        raise ValueError(f"expected one entry per image ({n}), got {len(pred_boxes)} boxes and {len(pred_scores)} scores")
    if "all" not in area_ranges:
        raise ValueError(f"area_ranges must contain 'all', got {sorted(area_ranges)}")
    if max_dets < 1:
        raise ValueError(f"max_dets must be >= 1, got {max_dets}")
    pb = [np.asarray(b, np.float64).reshape(-1, 4) for b in pred_boxes]
    ps = [np.asarray(s, np.float64).reshape(-1) for s in pred_scores]
    gb = [np.asarray(b, np.float64).reshape(-1, 4) for b in gt_boxes]
    pl = [np.zeros(len(b), np.int64) for b in pb] if pred_labels is None else [np.asarray(x).reshape(-1) for x in pred_labels]
    gl = [np.zeros(len(b), np.int64) for b in gb] if gt_labels is None else [np.asarray(x).reshape(-1) for x in gt_labels]
    ga = [(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) for b in gb] if gt_areas is None else [np.asarray(x, np.float64).reshape(-1) for x in gt_areas]
    for i in range(n):
        if not len(pb[i]) == len(ps[i]) == len(pl[i]) or not len(gb[i]) == len(gl[i]) == len(ga[i]):
            raise ValueError(f"image {i}: boxes, scores, labels and areas disagree in length "
                             f"({len(pb[i])}, {len(ps[i])}, {len(pl[i])} detections; {len(gb[i])}, {len(gl[i])}, {len(ga[i])} ground truths)")
    categories = sorted(set(np.concatenate(pl + gl).tolist()))
    # precision[t, r, k, a]; -1 where a category has no counted ground truth
    precision = -np.ones((len(IOU_THRESHOLDS), len(RECALL_POINTS), len(categories), len(area_ranges)))
    for k, c in enumerate(categories):
        per_image = []
        for i in range(n):
            d = np.nonzero(pl[i] == c)[0]
            d = d[np.argsort(-ps[i][d], kind="mergesort")][:max_dets]
            g = np.nonzero(gl[i] == c)[0]
            per_image.append((d, g, pairwise_iou(pb[i][d], gb[i][g])))
        for a, (lo, hi) in enumerate(area_ranges.values()):
            parts = [_image_matches(pb[i][d], ps[i][d], ious, ga[i][g], lo, hi) for i, (d, g, ious) in enumerate(per_image)]
            if sum(part[3] for part in parts):
                precision[:, :, k, a] = _precision(parts)
    out = {"AP": _mean(precision[:, :, :, 0]), "AP50": _mean(precision[0, :, :, 0]), "AP75": _mean(precision[5, :, :, 0])}
    for a, name in enumerate(area_ranges):
        if name != "all":
            out[f"AP_{name}"] = _mean(precision[:, :, :, a])
    return out


def _image_matches(boxes: np.ndarray, scores: np.ndarray, ious: np.ndarray, gt_areas: np.ndarray, lo: float,
                   hi: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One image and category: (n, 4) detections best first, their (n,) scores, (n, m) IoUs with the ground truth and
    its (m,) areas -> scores (n,), matched (T, n), ignored (T, n) and the number of counted ground truths, for the
    area range [lo, hi]."""
    g_ign = (gt_areas < lo) | (gt_areas > hi)
    order = np.argsort(g_ign, kind="mergesort")
    g_ign = g_ign[order]
    det_gt = _match(ious[:, order], g_ign, IOU_THRESHOLDS)
    d_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    d_ign = np.append(g_ign, False)[det_gt]  # index -1 (unmatched) reads the appended False
    d_ign |= (det_gt == -1) & ((d_area < lo) | (d_area > hi))[None, :]
    return scores, det_gt > -1, d_ign, int((~g_ign).sum())


def _precision(parts: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray, int]]) -> np.ndarray:
    """Per image ``_image_matches`` (at least one counted ground truth in all) -> (T, R) monotone precision at the
    recall points, per IoU threshold."""
    counted = sum(part[3] for part in parts)
    s = np.concatenate([p[0] for p in parts])
    order = np.argsort(-s, kind="mergesort")
    m = np.concatenate([p[1] for p in parts], axis=1)[:, order]
    ig = np.concatenate([p[2] for p in parts], axis=1)[:, order]
    tp = np.cumsum(m & ~ig, axis=1, dtype=np.float64)
    fp = np.cumsum(~m & ~ig, axis=1, dtype=np.float64)
    out = np.zeros((len(IOU_THRESHOLDS), len(RECALL_POINTS)))
    for t in range(len(IOU_THRESHOLDS)):
        rc = tp[t] / counted
        pr = tp[t] / (fp[t] + tp[t] + np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr
        idx = np.searchsorted(rc, RECALL_POINTS, side="left")
        ok = idx < len(pr)
        out[t, ok] = pr[idx[ok]]
    return out


def bootstrap_ap(pred_boxes: Sequence[np.ndarray], pred_scores: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray],
                 n_boot: int = 1000, seed: int = 0, max_dets: int = 100) -> Dict[str, np.ndarray]:
    """AP of one category over ``n_boot`` bootstrap resamples of the images (drawn with replacement; Efron and
    Tibshirani 1993), for confidence intervals: the same ``seed`` and number of images draw the same resamples, so two
    methods' samples on the same images are paired and their difference's spread is the comparison's.

    Args: as ``detection_ap`` (one category, area range "all").

    Returns:
        {"AP50": (n_boot,), "AP": (n_boot,) AP50:95}; NaN for a resample without ground truth (read the samples
        with ``np.nanpercentile``).
    """
    n = len(gt_boxes)
    if len(pred_boxes) != n or len(pred_scores) != n:
        raise ValueError(f"expected one entry per image ({n}), got {len(pred_boxes)} boxes and {len(pred_scores)} scores")
    if n_boot < 1 or n == 0:
        raise ValueError(f"n_boot must be >= 1 and there must be images, got n_boot={n_boot} and {n} images")
    parts = []
    for b, sc, g in zip(pred_boxes, pred_scores, gt_boxes):
        b, sc, g = np.asarray(b, np.float64).reshape(-1, 4), np.asarray(sc, np.float64).reshape(-1), np.asarray(g, np.float64).reshape(-1, 4)
        if len(b) != len(sc):
            raise ValueError(f"{len(b)} boxes but {len(sc)} scores in one image")
        d = np.argsort(-sc, kind="mergesort")[:max_dets]
        parts.append(_image_matches(b[d], sc[d], pairwise_iou(b[d], g), np.zeros(len(g)), 0.0, np.inf))  # range "all"
    rng = np.random.default_rng(seed)
    out = {"AP50": np.full(n_boot, np.nan), "AP": np.full(n_boot, np.nan)}
    for r in range(n_boot):
        sample = [parts[i] for i in rng.integers(0, n, n)]
        if sum(part[3] for part in sample):
            p = _precision(sample)
            out["AP50"][r], out["AP"][r] = p[0].mean(), p.mean()
    return out


def _mean(p: np.ndarray) -> float:
    valid = p[p > -1]
    return float(valid.mean()) if valid.size else -1.0


def mask_ap(pred_masks: Sequence[np.ndarray], pred_scores: Sequence[np.ndarray], gt_masks: Sequence[np.ndarray],
            max_dets: int = 100) -> Dict[str, float]:
    """COCO mask AP over a set of images, one category, computed by pycocotools' ``COCOeval`` (iouType "segm").

    Args:
        pred_masks: per image, (n_i, H, W) bool masks, or n_i of their ``encode_masks`` RLEs (compact).
        pred_scores: per image, (n_i,) scores.
        gt_masks: per image, (m_i, H, W) bool masks.
        max_dets: detections kept per image, best first.

    Returns:
        {"AP": AP50:95, "AP50", "AP75"}; -1 where no ground truth counts.
    """
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise ImportError("mask AP needs pycocotools: pip install pycocotools") from e
    if not len(pred_masks) == len(pred_scores) == len(gt_masks):
        raise ValueError(f"expected one entry per image, got {len(pred_masks)} masks, {len(pred_scores)} scores, "
                         f"{len(gt_masks)} ground truths")

    def rle(m: np.ndarray | dict) -> dict:
        return m if isinstance(m, dict) else encode_masks(m[None])[0]

    images, gts, dets = [], [], []
    for i, (pm, ps, gm) in enumerate(zip(pred_masks, pred_scores, gt_masks)):
        h, w = np.asarray(gm).shape[-2:] if len(gm) else rle(pm[0])["size"] if len(pm) else (1, 1)
        images.append({"id": i + 1, "height": int(h), "width": int(w)})
        for m in gm:
            r = rle(m)
            gts.append({"id": len(gts) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "segmentation": r,
                        "area": float(mask_utils.area(r)), "bbox": [float(v) for v in mask_utils.toBbox(r)]})
        for m, s in zip(pm, ps):
            dets.append({"image_id": i + 1, "category_id": 1, "segmentation": rle(m), "score": float(s)})
    if not gts:
        return {"AP": -1.0, "AP50": -1.0, "AP75": -1.0}
    if not dets:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    coco = COCO()
    coco.dataset = {"images": images, "annotations": gts, "categories": [{"id": 1, "name": "object"}]}
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(dets), "segm")
    ev.params.maxDets = [1, 10, max_dets]
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "AP75": float(ev.stats[2])}


def pointing_game(points: Sequence[Optional[Tuple[float, float]]], gt_masks: Sequence[np.ndarray],
                  tolerance: float = 15.0) -> Dict[str, float]:
    """Pointing game (Zhang et al., ECCV 2016): the share of images with a target whose one point lies on a target's
    pixel or within ``tolerance`` px of one.

    Args:
        points: per image, the localizer's (x, y) point in pixels (e.g. its best box's centre), or None (a miss).
        gt_masks: per image, (m, H, W) bool target masks; images without a target are left out.
        tolerance: how far from a target pixel a point still hits, px (the paper's 15).

    Returns:
        {"pointing": hits / images, "images": images with a target}; pointing is -1 without any.
    """
    if len(points) != len(gt_masks):
        raise ValueError(f"expected one point per image, got {len(points)} points for {len(gt_masks)} images")
    hits, counted = 0, 0
    for point, masks in zip(points, gt_masks):
        masks = np.asarray(masks, bool)
        if not masks.size or not masks.any():
            continue
        counted += 1
        if point is None:
            continue
        ys, xs = np.nonzero(masks.any(axis=0))  # pixel (x, y) covers [x, x + 1) x [y, y + 1)
        dx = np.maximum(np.maximum(xs - point[0], point[0] - xs - 1), 0)  # distance to the pixel's square
        dy = np.maximum(np.maximum(ys - point[1], point[1] - ys - 1), 0)
        hits += bool((dx**2 + dy**2 <= tolerance**2).any())
    return {"pointing": hits / counted if counted else -1.0, "images": float(counted)}


def encode_masks(masks: np.ndarray) -> List[dict]:
    """(n, H, W) bool masks -> n pycocotools RLEs (compressed, JSON-ready)."""
    from pycocotools import mask as mask_utils

    out = []
    for m in masks:
        r = mask_utils.encode(np.asfortranarray(np.asarray(m, np.uint8)))
        r["counts"] = r["counts"].decode()
        out.append(r)
    return out

"""Where a detector's AP50 goes: a simplified TIDE error breakdown (Bolya et al., ECCV 2020) for one query category.

Every detection that is not a true positive at IoU ``t_f`` gets one error type, in TIDE's order, against the
image's targets (the query's objects) and its other objects (distractors, the "wrong class"):

- ``dupe``: IoU >= t_f with a target that a better detection already matched;
- ``cls``: IoU >= t_f with another object (a box on the wrong object);
- ``loc``: t_b <= IoU < t_f with a target (the right object, badly boxed);
- ``both``: t_b <= IoU < t_f with another object;
- ``bkg``: IoU < t_b with every object;

and every target that no detection matched nor boxed badly (``loc``) is ``miss``. dAP of a type is the AP50 gained by fixing that type alone, as
TIDE's oracles do: a ``loc`` detection gets its target's box (dropped if that target is already matched), the
other false positives are dropped, and missed targets are removed from the ground truth. TIDE's full version
(several categories, relabelling ``cls`` errors into another category's evaluation, and AP50:95) is not
implemented: with one query at a time a box on another object can only be dropped.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from metricvision.metrics.detection import detection_ap, pairwise_iou

ERROR_TYPES = ("cls", "loc", "both", "dupe", "bkg", "miss")


def _errors(boxes: np.ndarray, scores: np.ndarray, targets: np.ndarray, others: np.ndarray,
            t_f: float, t_b: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image -> per detection (score order kept as given) its type ("tp" or an error), its best target, and
    the (m,) mask of missed targets."""
    order = np.argsort(-scores, kind="mergesort")
    kinds = np.full(len(boxes), "", dtype=object)
    best_target = np.full(len(boxes), -1)
    iou_t, iou_o = pairwise_iou(boxes, targets), pairwise_iou(boxes, others)
    taken = np.zeros(len(targets), bool)
    for d in order:
        free = np.where(taken, -1.0, iou_t[d]) if len(targets) else np.zeros(0)
        t_iou = iou_t[d].max(initial=0.0)
        o_iou = iou_o[d].max(initial=0.0)
        best_target[d] = int(iou_t[d].argmax()) if len(targets) else -1
        if len(targets) and free.max() >= t_f:
            g = int(free.argmax())
            kinds[d], taken[g], best_target[d] = "tp", True, g
        elif t_iou >= t_f:
            kinds[d] = "dupe"
        elif o_iou >= t_f:
            kinds[d] = "cls"
        elif t_iou >= t_b:
            kinds[d] = "loc"
        elif o_iou >= t_b:
            kinds[d] = "both"
        else:
            kinds[d] = "bkg"
    missed = ~taken
    missed[best_target[kinds == "loc"]] = False  # a target boxed badly counts as a localization error, not a miss
    return kinds, best_target, missed


def detection_errors(pred_boxes: Sequence[np.ndarray], pred_scores: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray],
                     other_boxes: Sequence[np.ndarray], t_f: float = 0.5, t_b: float = 0.1) -> Dict[str, object]:
    """AP50 and the AP50 gained by fixing each error type alone.

    Args:
        pred_boxes: per image, (n_i, 4) detections (x0, y0, x1, y1); pred_scores: per image, (n_i,).
        gt_boxes: per image, (m_i, 4) targets; other_boxes: per image, (k_i, 4) the other objects.
        t_f, t_b: TIDE's foreground and background IoU thresholds.

    Returns:
        {"AP50", "dAP": {type: gain}, "count": {type: number of detections (targets for "miss")}}.
    """
    if not len(pred_boxes) == len(pred_scores) == len(gt_boxes) == len(other_boxes):
        raise ValueError(f"expected one entry per image, got {len(pred_boxes)} boxes, {len(pred_scores)} scores, "
                         f"{len(gt_boxes)} targets and {len(other_boxes)} other-object lists")
    if not 0 < t_b < t_f <= 1:
        raise ValueError(f"need 0 < t_b < t_f <= 1, got t_b={t_b}, t_f={t_f}")
    pb = [np.asarray(b, np.float64).reshape(-1, 4) for b in pred_boxes]
    ps = [np.asarray(s, np.float64).reshape(-1) for s in pred_scores]
    gb = [np.asarray(b, np.float64).reshape(-1, 4) for b in gt_boxes]
    ob = [np.asarray(b, np.float64).reshape(-1, 4) for b in other_boxes]
    found = [_errors(b, s, g, o, t_f, t_b) for b, s, g, o in zip(pb, ps, gb, ob)]
    base = detection_ap(pb, ps, gb)["AP50"]
    gains: Dict[str, float] = {}
    for kind in ERROR_TYPES:
        boxes: List[np.ndarray] = []
        scores: List[np.ndarray] = []
        gts: List[np.ndarray] = []
        for b, s, g, (kinds, target, missed) in zip(pb, ps, gb, found):
            b, keep = b.copy(), kinds != kind
            if kind == "loc":  # the right object's box; a second box on a matched target is a duplicate, dropped
                fixed = np.flatnonzero(kinds == "loc")
                b[fixed] = g[target[fixed]]
                covered = set(target[kinds == "tp"].tolist())
                keep = np.ones(len(b), bool)
                for d in fixed[np.argsort(-s[fixed], kind="mergesort")]:
                    keep[d] = target[d] not in covered
                    covered.add(int(target[d]))
            if kind == "miss":
                keep, g = np.ones(len(b), bool), g[~missed]
            boxes.append(b[keep])
            scores.append(s[keep])
            gts.append(g)
        gains[kind] = detection_ap(boxes, scores, gts)["AP50"] - base
    counts = {k: int(sum((kinds == k).sum() for kinds, _, _ in found)) for k in ERROR_TYPES if k != "miss"}
    counts["miss"] = int(sum(m.sum() for _, _, m in found))
    return {"AP50": base, "dAP": gains, "count": counts}

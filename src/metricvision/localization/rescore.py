"""Context rescoring: a second look at one query's boxes in one image, learned on validation scenes.

A two-stage localizer scores each proposal by itself (objectness x the crop's cosine with the query), so its scores
are comparable neither across queries (a query that resembles everything scores high everywhere) nor within a scene
(a piece of the target or a near-miss beside it scores almost as the target does). After NMS, ``context_features``
describes each kept box by its own score *and* by its place among the image's proposals for that query: its rank,
its cosine's margin to the best one and to the runner-up, its z-score among all proposals, its size against theirs,
how much it overlaps or contains better boxes, how many boxes come close to it, how many proposals agree with it
(its cluster: the proposals at IoU >= 0.5, their mean cosine and best objectness) and how crowded the query is among
the references. ``ContextRescorer`` maps these to the probability that the box is a true detection, with gradient-
boosted trees fitted on the validation scenes' boxes, labelled as COCO matches them (IoU >= 0.5, greedily, best
first, so a duplicate is a negative). A simplified form of learned detection rescoring (e.g. the contextual
rescoring of Pato et al., "Seeing without Looking", CVPR 2020, which uses a recurrent network over all of an
image's detections; here trees over hand-made context features). ``cross_validated_ap`` says, on the validation
scenes alone, whether it helps: out-of-fold scores against the base scores.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from metricvision.metrics.detection import _match, detection_ap, intersections, pairwise_iou

FEATURES = ("cos", "logp", "base", "rank", "cos_to_best_kept", "cos_to_best_all", "cos_z", "margin_to_runner_up",
            "log_area_rel", "log_aspect", "iou_with_better", "inside_better", "contains_better", "rivals",
            "cluster_size", "cluster_cos", "cluster_logp", "query_crowding")
CLUSTER_IOU = 0.5  # a proposal this close to a kept box counts in its cluster (the box itself included)


def context_features(boxes: np.ndarray, logp: np.ndarray, cos: np.ndarray, keep: np.ndarray, base: np.ndarray,
                     query_crowding: float = 0.0) -> np.ndarray:
    """One query in one image -> (n, len(FEATURES)) features of its kept boxes.

    Args:
        boxes: (K, 4) x0 y0 x1 y1 proposals; logp: (K,) their objectness log-probabilities; cos: (K,) their cosines
            with the query (as the localizer scores them); keep: (n,) indices of the boxes kept by NMS, best first;
            base: (n,) the kept boxes' scores (their rank order); query_crowding: the query's mean cosine to its
            nearest references (0 without references).
    """
    kept, c = boxes[keep], cos[keep]
    n = len(keep)
    area = np.clip((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-6, None)
    w, h = np.clip(kept[:, 2] - kept[:, 0], 1e-6, None), np.clip(kept[:, 3] - kept[:, 1], 1e-6, None)
    others = np.where(np.eye(n, dtype=bool), -np.inf, c[None, :])
    runner_up = others.max(1, initial=-np.inf) if n > 1 else np.full(n, -1.0)
    inter = intersections(kept, kept)  # (n, n)
    own = area[keep]
    iou = inter / (own[:, None] + own[None, :] - inter)
    better = np.tri(n, k=-1, dtype=bool)  # [i, j]: j ranks above i
    cluster = pairwise_iou(kept, boxes) >= CLUSTER_IOU  # (n, K)
    size = np.maximum(cluster.sum(1), 1)
    feats = np.stack([
        c, logp[keep], np.log(np.clip(base, 1e-12, None)), np.arange(n, dtype=np.float64),
        c - c.max(initial=-np.inf), c - cos.max(), (c - cos.mean()) / (cos.std() + 1e-6), c - runner_up,
        np.log(own / np.median(area)), np.log(w / h),
        np.where(better, iou, 0).max(1, initial=0.0), np.where(better, inter / own[:, None], 0).max(1, initial=0.0),
        np.where(better, inter / own[None, :], 0).max(1, initial=0.0), (c[None, :] >= c[:, None] - 0.05).sum(1) - 1.0,
        size.astype(np.float64), (cluster * cos[None, :]).sum(1) / size,
        np.where(cluster, logp[None, :], -np.inf).max(1, initial=-50.0),
        np.full(n, query_crowding)], axis=1)
    return feats.astype(np.float64).reshape(n, len(FEATURES))


def match_labels(kept: np.ndarray, gt: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """(n, 4) boxes best first, (m, 4) targets -> (n,) whether each is a true detection under COCO's greedy matching."""
    if not len(kept) or not len(gt):
        return np.zeros(len(kept), bool)
    return _match(pairwise_iou(kept, gt), np.zeros(len(gt), bool), np.array([iou]))[0] >= 0


class ContextRescorer:
    """Gradient-boosted trees from ``context_features`` to the probability that a kept box is a true detection.

    Args: the trees' size and fitting (scikit-learn's ``HistGradientBoostingClassifier``; deterministic).
    """

    def __init__(self, max_iter: int = 150, learning_rate: float = 0.05, max_leaf_nodes: int = 8,
                 min_samples_leaf: int = 20, l2_regularization: float = 1.0) -> None:
        self.params = dict(max_iter=max_iter, learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
                           min_samples_leaf=min_samples_leaf, l2_regularization=l2_regularization)
        self.model = None

    def fit(self, feats: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> "ContextRescorer":
        """Per (image, query), (n, F) features and (n,) labels -> self, fitted on them all."""
        from sklearn.ensemble import HistGradientBoostingClassifier

        x, y = np.concatenate(feats), np.concatenate(labels)
        if y.all() or not y.any():
            raise ValueError(f"context rescoring needs true and false detections to learn from, got {int(y.sum())} true "
                             f"of {len(y)} boxes")
        self.model = HistGradientBoostingClassifier(early_stopping=False, random_state=0, **self.params).fit(x, y)
        return self

    def score(self, feats: np.ndarray) -> np.ndarray:
        """(n, F) features -> (n,) probabilities of a true detection."""
        if self.model is None:
            raise RuntimeError("ContextRescorer.score before fit")
        return self.model.predict_proba(feats)[:, 1] if len(feats) else np.zeros(0)


def cross_validated_ap(feats: List[np.ndarray], labels: List[np.ndarray], boxes: List[np.ndarray],
                       base: List[np.ndarray], gt: List[np.ndarray], folds: int = 5) -> Dict[str, float]:
    """AP50 of the base scores and of out-of-fold rescored ones (``folds`` splits by image), on the same boxes.

    Args: per (image, query): (n, F) features, (n,) labels, (n, 4) kept boxes, (n,) base scores, (m, 4) targets.
    """
    oof = [np.zeros(len(f)) for f in feats]
    parts = np.arange(len(feats)) % folds
    for k in range(folds):
        train = np.flatnonzero(parts != k)
        model = ContextRescorer().fit([feats[i] for i in train], [labels[i] for i in train])
        for i in np.flatnonzero(parts == k):
            oof[i] = model.score(feats[i])
    return {"base": detection_ap(boxes, base, gt)["AP50"], "rescored": detection_ap(boxes, oof, gt)["AP50"]}

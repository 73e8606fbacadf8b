"""Pair verification: LFW faces (10-fold accuracy, TAR@FAR) and local patches (FPR at 95% recall).

LFW follows the standard "unrestricted, labeled outside data" view-2 protocol (Huang et al.
2007), as facenet's ``lfw.evaluate`` computes it: for each of the 10 folds of pairs.txt the
threshold maximizing accuracy on the other nine folds is applied to it. FPR95 is
``ErrorRateAt95Recall`` of the Brown / HardNet evaluation code (github.com/DagnyT/hardnet,
code/EvalMetrics.py): pairs sorted by similarity, the threshold at the first position where
recall reaches 95%, and the false positives ranked before it over all negatives.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from metricvision.data.sample import Sample
from metricvision.metrics.protocols import PROTOCOLS, EmbedFn, Splits, as_float_tensors, embed, require_splits


def best_threshold(sims: np.ndarray, same: np.ndarray) -> float:
    """Similarity threshold (predict "same" when sim >= t) of highest accuracy; smallest t among ties.

    Candidates are the distinct similarities and +inf (everything "different").
    """
    values = np.unique(sims)
    candidates = np.append(values, np.inf)
    # pairs with sim >= candidates[i]: those from position searchsorted(values[i]) on
    order = np.sort(sims)
    start = np.searchsorted(order, candidates, side="left")
    pos_sorted = np.asarray(same, bool)[np.argsort(sims, kind="stable")]
    pos_above = np.concatenate([np.cumsum(pos_sorted[::-1])[::-1], [0]])[start]
    neg_below = np.concatenate([[0], np.cumsum(~pos_sorted)])[start]
    return float(candidates[int(np.argmax(pos_above + neg_below))])


def kfold_accuracy(sims: np.ndarray, same: np.ndarray, folds: np.ndarray) -> Dict[str, float]:
    """Mean and std of per-fold accuracy, each fold thresholded by the best threshold of the others.

    Args:
        sims: (P,) finite pair similarities, float32 / float64.
        same: (P,) bool, True for genuine pairs.
        folds: (P,) fold of each pair.
    """
    sims, same, folds = as_float_tensors(sims=sims)[0].numpy(), np.asarray(same, bool), np.asarray(folds)
    accs, thresholds = [], []
    for f in np.unique(folds):
        test = folds == f
        t = best_threshold(sims[~test], same[~test])
        accs.append(float(((sims[test] >= t) == same[test]).mean()))
        thresholds.append(t)
    return {"accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)), "threshold": float(np.mean(thresholds))}


def tar_at_far(sims: np.ndarray, same: np.ndarray, far: float = 1e-3) -> float:
    """True accept rate at the strictest threshold whose false accept rate is <= ``far``.

    Accept when sim > t, t = the (m + 1)-th highest of the n impostor similarities, m the
    largest count with m / n <= far as scikit-learn's ``roc_curve`` computes the rate (so
    far = 0.29 allows 29 of 100, where floor(0.29 * 100) = 28).

    Args:
        sims: (P,) finite pair similarities.
        same: (P,) bool, True for genuine pairs.
    """
    if not 0 <= far <= 1:
        raise ValueError(f"far must be in [0, 1], got {far}")
    (sims,) = as_float_tensors(sims=sims)
    sims, same = sims.numpy(), np.asarray(same, bool)
    neg = np.sort(sims[~same])[::-1]
    if len(neg) == 0 or not same.any():
        raise ValueError("TAR@FAR needs both genuine and impostor pairs")
    n = len(neg)
    allowed = int(np.floor(far * n))  # within one of the exact count: step to it
    while allowed < n and (allowed + 1) / n <= far:
        allowed += 1
    while allowed > 0 and allowed / n > far:
        allowed -= 1
    t = neg[allowed] if allowed < n else -np.inf
    return float((sims[same] > t).mean())


def fpr_at_recall(sims: np.ndarray, same: np.ndarray, recall: float = 0.95) -> float:
    """HardNet's ErrorRateAt95Recall: FPR at the first rank where recall >= ``recall``.

    Args:
        sims: (P,) finite pair similarities.
        same: (P,) bool, True for matching pairs.
    """
    (sims,) = as_float_tensors(sims=sims)
    labels = np.asarray(same, bool)[np.argsort(-sims.numpy(), kind="stable")]
    if not labels.any() or labels.all():
        raise ValueError("FPR95 needs both matching and non-matching pairs")
    threshold_index = int(np.argmax(np.cumsum(labels) >= recall * labels.sum()))
    fp = int((~labels[:threshold_index]).sum())
    tn = int((~labels[threshold_index:]).sum())
    return fp / (fp + tn)


def pair_similarities(embed_fn: EmbedFn, left: Sequence[Sample], right: Sequence[Sample], crop: bool = False) -> np.ndarray:
    """(P,) cosine similarity of aligned pairs; each distinct image (and box) is embedded once."""
    keys: Dict[Tuple, int] = {}
    unique: List[Sample] = []
    index = []
    for s in list(left) + list(right):
        key = (str(s.image) if not isinstance(s.image, np.ndarray) else id(s.image), s.bbox)
        if key not in keys:
            keys[key] = len(unique)
            unique.append(s)
        index.append(keys[key])
    e = embed(embed_fn, unique, crop=crop)[torch.as_tensor(index)]
    return (e[: len(left)] * e[len(left) :]).sum(1).numpy()


@PROTOCOLS.register("lfw")
def lfw(embed_fn: EmbedFn, splits: Splits, far: float = 1e-3) -> Dict[str, float]:
    """LFW view 2: 10-fold verification accuracy and TAR@FAR on the "left" / "right" pairs."""
    require_splits(splits, ["left", "right"], "lfw")
    sims = pair_similarities(embed_fn, splits["left"], splits["right"])
    same = np.array([s.meta["same"] for s in splits["left"]], bool)
    folds = np.array([s.meta["fold"] for s in splits["left"]])
    return {**kfold_accuracy(sims, same, folds), f"tar@far={far:g}": tar_at_far(sims, same, far)}


@PROTOCOLS.register("brown")
def brown(embed_fn: EmbedFn, splits: Splits) -> Dict[str, float]:
    """Brown / UBC patch pairs (m50 files): FPR at 95% recall."""
    require_splits(splits, ["left", "right"], "brown")
    sims = pair_similarities(embed_fn, splits["left"], splits["right"], crop=True)
    return {"fpr95": fpr_at_recall(sims, np.array([s.meta["same"] for s in splits["left"]], bool))}


@PROTOCOLS.register("hpatches")
def hpatches(embed_fn: EmbedFn, splits: Splits, seed: int = 0) -> Dict[str, float]:
    """HPatches patch verification: ref patch j vs patch j of each e / h / t image (positives),
    and vs a random patch of another point (one negative per positive); FPR95 per difficulty."""
    require_splits(splits, ["test"], "hpatches")
    samples = splits["test"]
    if len({s.label for s in samples}) < 2:
        raise ValueError("hpatches needs at least two patches (3D points)")
    emb = embed(embed_fn, samples, crop=True)
    labels = np.array([s.label for s in samples])
    ref = {s.label: i for i, s in enumerate(samples) if s.meta["image"] == "ref"}
    rng = np.random.default_rng(seed)
    out, all_sims, all_same = {}, [], []
    for difficulty, letter in (("easy", "e"), ("hard", "h"), ("tough", "t")):
        idx = np.array([i for i, s in enumerate(samples) if s.meta["image"].startswith(letter) and s.label in ref], dtype=np.int64)
        if len(idx) == 0:
            continue
        anchors = np.array([ref[l] for l in labels[idx]])
        negatives = rng.integers(0, len(samples), len(idx))
        while (clash := labels[negatives] == labels[anchors]).any():
            negatives[clash] = rng.integers(0, len(samples), int(clash.sum()))
        a, b = np.concatenate([anchors, anchors]), np.concatenate([idx, negatives])
        sims = (emb[a] * emb[b]).sum(1).numpy()
        same = labels[a] == labels[b]
        out[f"fpr95_{difficulty}"] = fpr_at_recall(sims, same)
        all_sims.append(sims)
        all_same.append(same)
    if not all_sims:
        raise ValueError("hpatches needs ref.png and e/h/t images in at least one sequence")
    out["fpr95"] = fpr_at_recall(np.concatenate(all_sims), np.concatenate(all_same))
    return out

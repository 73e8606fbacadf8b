"""Plain loops that follow each metric's reference code, one query / pair at a time, float64.

- revisitop python/evaluate.py ``compute_ap`` / ``compute_map`` (Radenovic et al. 2018);
- torchreid metrics/rank.py ``eval_market1501`` (argsort made stable for ties);
- pytorch-metric-learning ``AccuracyCalculator`` (P@1, Recall@k, R-Precision, MAP@R);
- OLTR utils.py ``F_measure(openset=True)`` since commit 7decb38 (January 2020);
- HardNet code/EvalMetrics.py ``ErrorRateAt95Recall``; scikit-learn ``roc_curve`` for TAR@FAR.
Ties rank the smaller index first everywhere (a stable sort over items in index order).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
from sklearn.metrics import roc_curve


def ref_compute_ap(ranks, nres):
    """revisitop compute_ap, verbatim."""
    nimgranks = len(ranks)
    ap = 0
    recall_step = 1.0 / nres
    for j in np.arange(nimgranks):
        rank = ranks[j]
        precision_0 = 1.0 if rank == 0 else float(j) / rank
        precision_1 = float(j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) * recall_step / 2.0
    return ap


def ref_compute_map(ranks, gnd, kappas=(1, 5, 10)):
    """revisitop compute_map, verbatim (ranks: (db, nq)); NaN when no query has a positive."""
    map_ = 0.0
    nq = len(gnd)
    pr = np.zeros(len(kappas))
    nempty = 0
    for i in np.arange(nq):
        qgnd = np.array(gnd[i]["ok"])
        if qgnd.shape[0] == 0:
            nempty += 1
            continue
        qgndj = np.array(gnd[i]["junk"])
        pos = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgnd)]
        junk = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgndj)]
        k, ij = 0, 0
        if len(junk):
            ip = 0
            while ip < len(pos):
                while ij < len(junk) and pos[ip] > junk[ij]:
                    k += 1
                    ij += 1
                pos[ip] = pos[ip] - k
                ip += 1
        map_ += ref_compute_ap(pos, len(qgnd))
        pos += 1
        for j in np.arange(len(kappas)):
            kq = min(max(pos), kappas[j])
            pr[j] += (pos <= kq).sum() / kq
    if nq == nempty:
        return float("nan"), np.full(len(kappas), np.nan)
    return map_ / (nq - nempty), pr / (nq - nempty)


def ref_eval_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """torchreid eval_market1501 (argsort made stable for ties) -> (cmc (max_rank,), mAP, valid
    queries); a query with fewer than max_rank kept gallery items holds its last CMC value
    (torchreid assumes larger galleries)."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, num_valid_q = [], [], 0.0
    for q_idx in range(num_q):
        order = indices[q_idx]
        remove = (g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])
        raw_cmc = matches[q_idx][np.invert(remove)]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        cmc[cmc > 1] = 1
        all_cmc.append(np.pad(cmc[:max_rank], (0, max(0, max_rank - len(cmc))), mode="edge"))
        num_valid_q += 1.0
        tmp_cmc = np.asarray([x / (i + 1.0) for i, x in enumerate(raw_cmc.cumsum())]) * raw_cmc
        all_ap.append(tmp_cmc.sum() / raw_cmc.sum())
    return np.asarray(all_cmc).astype(np.float32).sum(0) / num_valid_q, np.mean(all_ap), num_valid_q


def ref_retrieval(
    q: np.ndarray, qy: np.ndarray, r: Optional[np.ndarray] = None, ry: Optional[np.ndarray] = None, ks: Sequence[int] = (1, 2, 4, 8)
) -> Dict[str, float]:
    """AccuracyCalculator's definitions, one query at a time: references ranked by float64 inner
    product (a stable sort, the query itself removed in leave-one-out), R = relevant references,
    queries with R = 0 left out; every figure 0.0 when no query is left (as PML returns)."""
    loo = r is None
    r, ry = (q, qy) if loo else (r, ry)
    sums = {f"recall@{k}": 0.0 for k in ks} | {"precision@1": 0.0, "r_precision": 0.0, "map@r": 0.0}
    count = 0
    for i in range(len(q)):
        s = r.astype(np.float64) @ q[i].astype(np.float64)
        order = np.argsort(-s, kind="stable")
        if loo:
            order = order[order != i]
        hits = ry[order] == qy[i]
        big_r = int(hits.sum())
        if big_r == 0:
            continue
        count += 1
        for k in ks:
            sums[f"recall@{k}"] += float(hits[:k].any())
        sums["precision@1"] += float(hits[0])
        sums["r_precision"] += hits[:big_r].sum() / big_r
        sums["map@r"] += sum(hits[: j + 1].sum() / (j + 1) for j in range(big_r) if hits[j]) / big_r
    return {name: v / count if count else 0.0 for name, v in sums.items()} | {"num_queries": float(count)}


def ref_f_measure(preds, labels):
    """OLTR F_measure(openset=True), current code."""
    tp = fp = fn = 0.0
    for i in range(len(labels)):
        tp += 1 if preds[i] == labels[i] and labels[i] != -1 else 0
        fp += 1 if preds[i] != labels[i] and labels[i] != -1 else 0
        fn += 1 if preds[i] != labels[i] and labels[i] == -1 else 0
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * ((precision * recall) / (precision + recall + 1e-12))


def ref_fpr95(labels, scores):
    """HardNet ErrorRateAt95Recall (distances = 1 / scores for positive scores, stable sort)."""
    distances = 1.0 / (scores + 1e-8)
    labels = labels[np.argsort(distances, kind="stable")]
    threshold_index = np.argmax(np.cumsum(labels) >= 0.95 * np.sum(labels))
    fp = np.sum(labels[:threshold_index] == 0)
    tn = np.sum(labels[threshold_index:] == 0)
    return float(fp) / float(fp + tn)


def ref_tar_at_far(sims, same, far):
    """The highest TPR of scikit-learn's ROC among thresholds with FPR <= far."""
    fpr, tpr, _ = roc_curve(same, sims, drop_intermediate=False)
    return float(tpr[fpr <= far].max())

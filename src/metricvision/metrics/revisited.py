"""Revisited Oxford and Paris (Radenovic et al., "Revisiting Oxford and Paris", CVPR 2018).

Follows revisitop's ``compute_map`` / ``compute_ap`` (github.com/filipradenovic/revisitop,
python/evaluate.py): AP by the trapezoid rule over positive positions after discounting the
junk ranked before each positive, mP@k with k' = min(max(positive position), k), and
queries without positives left out of the means. Protocols easy (ok = easy; junk = junk +
hard), medium (ok = easy + hard; junk = junk) and hard (ok = hard; junk = junk + easy).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from metricvision.metrics.protocols import PROTOCOLS, EmbedFn, Splits, embed, require_splits

KAPPAS = (1, 5, 10)
SETUPS = {"easy": (("easy",), ("junk", "hard")), "medium": (("easy", "hard"), ("junk",)), "hard": (("hard",), ("junk", "easy"))}


def average_precision(positions: np.ndarray, junk: np.ndarray, num_positives: int) -> Tuple[float, np.ndarray]:
    """revisitop's AP of one query from 0-based ranked positions.

    Args:
        positions: (P,) positions of the positives in the ranking.
        junk: (J,) positions of the junk items.
        num_positives: number of positives (the recall step is 1 / num_positives).

    Returns:
        AP, and the (P,) junk-discounted 0-based positions of the positives, sorted.
    """
    pos = np.sort(np.asarray(positions, dtype=np.int64))
    pos = pos - np.searchsorted(np.sort(np.asarray(junk, dtype=np.int64)), pos)
    j = np.arange(len(pos), dtype=np.float64)
    precision_0 = np.where(pos == 0, 1.0, j / np.maximum(pos, 1))
    precision_1 = (j + 1) / (pos + 1)
    return float(((precision_0 + precision_1) / 2).sum() / num_positives), pos


def mean_average_precision(
    positions: Sequence[np.ndarray], junk: Sequence[np.ndarray], kappas: Sequence[int] = KAPPAS
) -> Dict[str, float]:
    """mAP and mP@k over queries; a query with no positive is left out (NaN in revisitop).

    Args:
        positions: per query, 0-based ranked positions of its positives.
        junk: per query, 0-based ranked positions of its junk items.
    """
    aps, prs = [], []
    for pos, jk in zip(positions, junk):
        if len(pos) == 0:
            continue
        ap, adjusted = average_precision(pos, jk, len(pos))
        aps.append(ap)
        one_based = adjusted + 1
        prs.append([(one_based <= min(one_based.max(), k)).sum() / min(one_based.max(), k) for k in kappas])
    out = {"map": float(np.mean(aps)) if aps else 0.0}
    for i, k in enumerate(kappas):
        out[f"mp@{k}"] = float(np.mean([p[i] for p in prs])) if prs else 0.0
    return out


def ranked_positions(queries: torch.Tensor, db: torch.Tensor, items: Sequence[np.ndarray], db_chunk: int = 262144) -> List[np.ndarray]:
    """For each query, the 0-based positions of ``items[i]`` in its ranking of ``db`` by inner product.

    Ties are ranked by db index (a stable sort). One query's score row is held at a time,
    filled ``db_chunk`` vectors at a time.

    Args:
        queries: (Q, D) embeddings.
        db: (N, D) embeddings.
        items: per query, (M,) db indices whose positions are wanted.
    """
    row = torch.empty(db.shape[0])
    out = []
    for i in range(queries.shape[0]):
        for s in range(0, db.shape[0], db_chunk):
            torch.mv(db[s : s + db_chunk], queries[i], out=row[s : s + db_chunk])
        order = torch.sort(row, descending=True, stable=True).indices
        position = torch.empty_like(order)
        position[order] = torch.arange(len(order))
        out.append(position[torch.as_tensor(np.asarray(items[i], dtype=np.int64))].numpy())
    return out


def revisited_scores(queries: torch.Tensor, db: torch.Tensor, gnd: Sequence[Dict[str, Sequence[int]]], kappas: Sequence[int] = KAPPAS) -> Dict[str, float]:
    """{easy,medium,hard}_map and _mp@k (fractions, not percent) from embeddings and ground truth.

    Args:
        queries: (Q, D) embeddings of the cropped queries.
        db: (N, D) embeddings of the database (distractors appended after the dataset images).
        gnd: per query, "easy" / "hard" / "junk" lists of db indices.
    """
    kinds = ("easy", "hard", "junk")
    items = [np.concatenate([np.asarray(g.get(k, []), dtype=np.int64) for k in kinds]) for g in gnd]
    found = ranked_positions(queries, db, items)
    by_kind = []
    for g, pos in zip(gnd, found):
        sizes = np.cumsum([0] + [len(g.get(k, [])) for k in kinds])
        by_kind.append({k: pos[sizes[i] : sizes[i + 1]] for i, k in enumerate(kinds)})
    out: Dict[str, float] = {}
    for setup, (ok, junk) in SETUPS.items():
        positions = [np.concatenate([p[k] for k in ok]) for p in by_kind]
        junk_positions = [np.concatenate([p[k] for k in junk]) for p in by_kind]
        for name, v in mean_average_precision(positions, junk_positions, kappas).items():
            out[f"{setup}_{name}"] = v
    return out


@PROTOCOLS.register("roxford5k")
@PROTOCOLS.register("rparis6k")
@PROTOCOLS.register("revisited")
def revisited(embed_fn: EmbedFn, splits: Splits, kappas: Sequence[int] = KAPPAS) -> Dict[str, float]:
    """Revisited Oxford / Paris: queries cropped to their box; "distractors" (R-1M) appended to "db"."""
    require_splits(splits, ["query", "db"], "revisited")
    q = embed(embed_fn, splits["query"], crop=True)
    db = embed(embed_fn, splits["db"] + splits.get("distractors", []))
    return revisited_scores(q, db, [s.meta for s in splits["query"]], kappas)

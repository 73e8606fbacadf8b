"""Revisited Oxford and Paris (Radenovic et al., "Revisiting Oxford and Paris", CVPR 2018).

Follows revisitop's ``compute_map`` / ``compute_ap`` (github.com/filipradenovic/revisitop,
python/evaluate.py): AP by the trapezoid rule over positive positions after discounting the
junk ranked before each positive, mP@k with k' = min(max(positive position), k), and
queries without positives left out of the means. Protocols easy (ok = easy; junk = junk +
hard), medium (ok = easy + hard; junk = junk) and hard (ok = hard; junk = junk + easy).
As there, a ground-truth list is a set of images (``np.in1d``: an image listed twice, or in
both ok and junk, holds one position) while the recall step is 1 / len(ok list); a protocol
in which no query has a positive has no mAP (0 / 0 there): NaN here, with a warning.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from metricvision.metrics.protocols import PROTOCOLS, ArrayLike, EmbedFn, Splits, as_float_tensors, embed, require_splits

KAPPAS = (1, 5, 10)
SETUPS = {"easy": (("easy",), ("junk", "hard")), "medium": (("easy", "hard"), ("junk",)), "hard": (("hard",), ("junk", "easy"))}


def average_precision(positions: np.ndarray, junk: np.ndarray, num_positives: int) -> Tuple[float, np.ndarray]:
    """revisitop's AP of one query from 0-based ranked positions.

    Args:
        positions: (P,) positions of the positives in the ranking (a repeated one counts once).
        junk: (J,) positions of the junk items (a repeated one counts once).
        num_positives: number of positives (the recall step is 1 / num_positives).

    Returns:
        AP, and the (P',) junk-discounted 0-based positions of the distinct positives, sorted.
    """
    pos = np.unique(np.asarray(positions, dtype=np.int64))
    pos = pos - np.searchsorted(np.unique(np.asarray(junk, dtype=np.int64)), pos)
    j = np.arange(len(pos), dtype=np.float64)
    precision_0 = np.where(pos == 0, 1.0, j / np.maximum(pos, 1))
    precision_1 = (j + 1) / (pos + 1)
    return float(((precision_0 + precision_1) / 2).sum() / num_positives), pos


def mean_average_precision(
    positions: Sequence[np.ndarray], junk: Sequence[np.ndarray], kappas: Sequence[int] = KAPPAS, name: str = "mAP"
) -> Dict[str, float]:
    """mAP and mP@k over queries; a query with no positive is left out (NaN in revisitop).

    Args:
        positions: per query, 0-based ranked positions of its positives, one per entry of its
            ok list (the recall step is 1 / len; a repeated position counts once).
        junk: per query, 0-based ranked positions of its junk items.
        name: what the warning calls these figures.

    Returns:
        "map" and "mp@k"; NaN, with a warning, when no query has a positive.
    """
    aps, prs = [], []
    for pos, jk in zip(positions, junk):
        if len(pos) == 0:
            continue
        ap, adjusted = average_precision(pos, jk, len(pos))
        aps.append(ap)
        one_based = adjusted + 1
        prs.append([(one_based <= min(one_based.max(), k)).sum() / min(one_based.max(), k) for k in kappas])
    if not aps:
        warnings.warn(f"{name}: no query has a positive, so mAP and mP@k are undefined; reported as NaN", stacklevel=2)
        return {"map": float("nan")} | {f"mp@{k}": float("nan") for k in kappas}
    out = {"map": float(np.mean(aps))}
    for i, k in enumerate(kappas):
        out[f"mp@{k}"] = float(np.mean([p[i] for p in prs]))
    return out


def ranked_positions(queries: torch.Tensor, db: torch.Tensor, items: Sequence[np.ndarray], db_chunk: int = 262144,
                     scores: Optional[torch.Tensor] = None) -> List[np.ndarray]:
    """For each query, the 0-based positions of ``items[i]`` in its ranking of ``db`` by inner product.

    Ties are ranked by db index (a stable sort). One query's score row is held at a time,
    filled ``db_chunk`` vectors at a time.

    Args:
        queries: (Q, D) embeddings, float32 or float64 like ``db``.
        db: (N, D) embeddings.
        items: per query, (M,) db indices whose positions are wanted.
        scores: (Q, N) scores to rank by instead of inner products (a re-ranking's, e.g. diffusion).
    """
    row = torch.empty(db.shape[0], dtype=db.dtype)
    out = []
    for i in range(queries.shape[0]):
        if scores is not None:
            row = scores[i]
        else:
            for s in range(0, db.shape[0], db_chunk):
                torch.mv(db[s : s + db_chunk], queries[i], out=row[s : s + db_chunk])
        order = torch.sort(row, descending=True, stable=True).indices
        position = torch.empty_like(order)
        position[order] = torch.arange(len(order))
        out.append(position[torch.as_tensor(np.asarray(items[i], dtype=np.int64))].numpy())
    return out


def revisited_scores(queries: ArrayLike, db: ArrayLike, gnd: Sequence[Dict[str, Sequence[int]]], kappas: Sequence[int] = KAPPAS,
                     rerank: str = "none", rerank_params: Optional[Dict[str, Any]] = None) -> Dict[str, float]:
    """{easy,medium,hard}_map and _mp@k (fractions, not percent) from embeddings and ground truth.

    Args:
        queries: (Q, D) float32 / float64 embeddings of the cropped queries, finite, L2-normalized for a re-ranking.
        db: (N, D) embeddings of the database (distractors appended after the dataset images).
        gnd: per query, "easy" / "hard" / "junk" lists of db indices.
        rerank: "none"; "alpha_qe" (alpha query expansion, Radenovic et al. 2018: params n, alpha); or
            "diffusion" (Iscen et al. 2017 on the db's mutual kNN graph: params k, alpha, gamma, query_k, maxiter).
        rerank_params: the re-ranking's keyword arguments (index/rerank.py).

    Returns:
        A protocol in which no query has a positive reports NaN (with a warning); an error
        when no query has any easy or hard image.
    """
    queries, db = as_float_tensors(queries=queries, db=db)
    if not any(len(g.get("easy", [])) or len(g.get("hard", [])) for g in gnd):
        raise ValueError("no query has an easy or hard image: every protocol's mAP is undefined; check the ground truth")
    queries, scores = reranked(queries, db, rerank, rerank_params or {})
    kinds = ("easy", "hard", "junk")
    items = [np.concatenate([np.asarray(g.get(k, []), dtype=np.int64) for k in kinds]) for g in gnd]
    found = ranked_positions(queries, db, items, scores=scores)
    by_kind = []
    for g, pos in zip(gnd, found):
        sizes = np.cumsum([0] + [len(g.get(k, [])) for k in kinds])
        by_kind.append({k: pos[sizes[i] : sizes[i + 1]] for i, k in enumerate(kinds)})
    out: Dict[str, float] = {}
    for setup, (ok, junk) in SETUPS.items():
        positions = [np.concatenate([p[k] for k in ok]) for p in by_kind]
        junk_positions = [np.concatenate([p[k] for k in junk]) for p in by_kind]
        for name, v in mean_average_precision(positions, junk_positions, kappas, name=f"revisited {setup}").items():
            out[f"{setup}_{name}"] = v
    return out


RERANKINGS = ("none", "alpha_qe", "diffusion")


def reranked(queries: torch.Tensor, db: torch.Tensor, rerank: str, params: Dict[str, Any]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(queries to rank db by, (Q, N) scores that replace inner products or None) after re-ranking ``rerank``."""
    if rerank not in RERANKINGS:
        raise ValueError(f"rerank must be one of {', '.join(RERANKINGS)}, got {rerank!r}")
    if rerank == "none":
        return queries, None
    from metricvision.index.rerank import Diffusion, expanded_queries

    q, x = queries.numpy().astype(np.float32), db.numpy().astype(np.float32)
    if rerank == "alpha_qe":
        return torch.from_numpy(expanded_queries(q, x, **params)).to(db.dtype), None
    return queries, torch.from_numpy(Diffusion(**params).fit(x).scores(q))


@PROTOCOLS.register("roxford5k")
@PROTOCOLS.register("rparis6k")
@PROTOCOLS.register("revisited")
def revisited(embed_fn: EmbedFn, splits: Splits, kappas: Sequence[int] = KAPPAS, rerank: str = "none",
              rerank_params: Optional[Dict[str, Any]] = None) -> Dict[str, float]:
    """Revisited Oxford / Paris: queries cropped to their box; "distractors" (R-1M) appended to "db";
    optional alpha-QE / diffusion re-ranking (``eval.params.rerank``, see revisited_scores)."""
    require_splits(splits, ["query", "db"], "revisited")
    q = embed(embed_fn, splits["query"], crop=True)
    db = embed(embed_fn, splits["db"] + splits.get("distractors", []))
    return revisited_scores(q, db, [s.meta for s in splits["query"]], kappas, rerank, rerank_params)

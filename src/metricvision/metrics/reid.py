"""Person re-identification (Market-1501, DukeMTMC-reID): CMC and mAP as torchreid computes them.

Port of torchreid's ``eval_market1501`` (github.com/KaiyangZhou/deep-person-reid,
torchreid/metrics/rank.py): per query, gallery items of the same identity seen by the same
camera are removed; a query with no remaining match is left out; CMC counts a hit at rank r
when the first match is within r; AP is non-interpolated, sum_j (j / rank_j) / matches.
Ties are ranked by gallery index.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch

from metricvision.metrics.protocols import PROTOCOLS, ArrayLike, EmbedFn, Splits, as_float_tensors, embed, labels_of, require_splits

RANKS = (1, 5, 10, 20)


def reid_scores(
    query: ArrayLike, query_ids: np.ndarray, query_cams: np.ndarray,
    gallery: ArrayLike, gallery_ids: np.ndarray, gallery_cams: np.ndarray,
    ranks: Sequence[int] = RANKS, query_chunk: int = 256,
) -> Dict[str, float]:
    """rank-k CMC and mAP, streamed over query chunks (one (chunk, G) score block at a time).

    Args:
        query: (Q, D) float32 / float64 embeddings, L2-normalized (cosine ranking = Euclidean
            ranking), finite.
        query_ids, query_cams: (Q,) identities and cameras.
        gallery: (G, D) embeddings.
        gallery_ids, gallery_cams: (G,) identities and cameras.
    """
    query, gallery = as_float_tensors(query=query, gallery=gallery)
    gid, gcam = torch.as_tensor(gallery_ids), torch.as_tensor(gallery_cams)
    qid_all, qcam_all = torch.as_tensor(query_ids), torch.as_tensor(query_cams)
    cmc_hits = torch.zeros(len(ranks), dtype=torch.float64)
    ap_sum, valid = 0.0, 0
    for s in range(0, query.shape[0], query_chunk):
        order = torch.sort(query[s : s + query_chunk] @ gallery.T, dim=1, descending=True, stable=True).indices
        qid, qcam = qid_all[s : s + query_chunk, None], qcam_all[s : s + query_chunk, None]
        same_id = gid[order] == qid
        keep = ~(same_id & (gcam[order] == qcam))
        match = same_id & keep
        kept_rank = torch.cumsum(keep, 1) - 1  # 0-based rank among the kept items
        has = match.any(1)
        first = torch.where(match, kept_rank, torch.iinfo(torch.int64).max).min(1).values[has]
        for i, r in enumerate(ranks):
            cmc_hits[i] += float((first < r).sum())
        nth = torch.cumsum(match, 1)
        precision = torch.where(match, nth / (kept_rank + 1).to(torch.float64), 0.0)
        ap_sum += float((precision.sum(1)[has] / match.sum(1)[has]).sum())
        valid += int(has.sum())
    if valid == 0:
        raise ValueError("no query has a gallery match from another camera; check identities and cameras")
    out = {f"rank{r}": float(cmc_hits[i] / valid) for i, r in enumerate(ranks)}
    out["map"] = ap_sum / valid
    out["num_queries"] = float(valid)
    return out


@PROTOCOLS.register("market1501")
@PROTOCOLS.register("dukemtmc")
@PROTOCOLS.register("reid")
def reid(embed_fn: EmbedFn, splits: Splits, ranks: Sequence[int] = RANKS) -> Dict[str, float]:
    """Re-ID query vs gallery; identity -1 (junk) is dropped by the reader, 0 (distractor) is kept."""
    require_splits(splits, ["query", "gallery"], "reid")
    q, g = splits["query"], splits["gallery"]
    cams = lambda ss: np.array([x.camera for x in ss], dtype=np.int64)  # noqa: E731
    return reid_scores(embed(embed_fn, q), labels_of(q), cams(q), embed(embed_fn, g), labels_of(g), cams(g), ranks)

"""Property-based checks of revisited Oxford/Paris and re-ID scoring against revisitop's
compute_map and torchreid's eval_market1501 (plain loops in metric_references.py).

Ground truths are drawn with repeated indices, indices in both easy and hard, all-junk
queries and protocols without positives; galleries smaller than the ranks asked for.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from metricvision.metrics import reid_scores, revisited_scores
from metricvision.metrics.revisited import SETUPS
from metric_cases import KINDS, grid_vectors
from metric_references import ref_compute_map, ref_eval_market1501

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None)


@st.composite
def revisited_case(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_db, n_q, dim = draw(st.integers(1, 30)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    kind = draw(st.sampled_from(KINDS))
    db, q = grid_vectors(rng, n_db, dim, kind, dtype), grid_vectors(rng, n_q, dim, kind, dtype)
    sizes = st.integers(0, 4)
    gnd = [{k: rng.integers(0, n_db, draw(sizes)).tolist() for k in ("easy", "hard", "junk")} for _ in range(n_q)]  # repeats, overlaps
    as_torch = draw(st.booleans())
    return (torch.from_numpy(q), torch.from_numpy(db)) if as_torch else (q, db), gnd, rng


def reference(q: np.ndarray, db: np.ndarray, gnd) -> dict:
    ranks = np.argsort(-(np.asarray(db, np.float64) @ np.asarray(q, np.float64).T), axis=0, kind="stable")
    out = {}
    for setup, (ok, junk) in SETUPS.items():
        g = [{"ok": sum((x[k] for k in ok), []), "junk": sum((x[k] for k in junk), [])} for x in gnd]
        m, pr = ref_compute_map(ranks.copy(), g)
        out |= {f"{setup}_map": m} | {f"{setup}_mp@{k}": v for k, v in zip((1, 5, 10), pr)}
    return out


@SETTINGS
@given(revisited_case())
def test_revisited_equals_revisitop(case):
    (q, db), gnd, _ = case
    ref = reference(q, db, gnd)
    if all(np.isnan(v) for v in ref.values()):
        with pytest.raises(ValueError, match="no query has an easy or hard image"):
            revisited_scores(q, db, gnd)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = revisited_scores(q, db, gnd)
    undefined = sorted({name.split("_")[0] for name, v in ref.items() if np.isnan(v)})
    assert sorted(str(w.message).split(":")[0].split()[-1] for w in caught) == undefined
    assert ours.keys() == ref.keys()
    for name, v in ref.items():
        assert (np.isnan(ours[name]) and np.isnan(v)) or ours[name] == pytest.approx(v, rel=1e-12), name


@SETTINGS
@given(revisited_case())
def test_revisited_db_order_does_not_matter_without_ties(case):
    (q, db), gnd, rng = case
    q, db = np.asarray(q), np.asarray(db)
    s = db.astype(np.float64) @ q.astype(np.float64).T
    if not all(len(np.unique(col)) == len(col) for col in s.T) or not any(g["easy"] or g["hard"] for g in gnd):
        return
    p = rng.permutation(len(db))
    new_index = np.argsort(p)  # db item i moves to position new_index[i]
    moved = [{k: new_index[np.asarray(v, np.int64)].tolist() for k, v in g.items()} for g in gnd]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = revisited_scores(q, db, gnd), revisited_scores(q, db[p], moved)
    for name in a:
        assert (np.isnan(a[name]) and np.isnan(b[name])) or a[name] == pytest.approx(b[name], rel=1e-12)


@st.composite
def reid_case(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_q, n_g, dim = draw(st.integers(1, 12)), draw(st.integers(1, 25)), draw(st.integers(1, 4))
    kind, dtype = draw(st.sampled_from(KINDS)), draw(st.sampled_from([np.float32, np.float64]))
    ids, cams = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    q, g = grid_vectors(rng, n_q, dim, kind, dtype), grid_vectors(rng, n_g, dim, kind, dtype)
    return q, rng.integers(0, ids, n_q), rng.integers(0, cams, n_q), g, rng.integers(0, ids, n_g), rng.integers(0, cams, n_g)


@SETTINGS
@given(reid_case(), st.integers(1, 7))
def test_reid_equals_torchreid(case, chunk):
    q, qid, qcam, g, gid, gcam = case
    ranks = (1, 5, 10, 20)
    distmat = -(q.astype(np.float64) @ g.astype(np.float64).T)  # torchreid sorts distances ascending
    has_match = ((gid[None] == qid[:, None]) & (gcam[None] != qcam[:, None])).any(1)
    if not has_match.any():
        with pytest.raises(ValueError, match="no query has a gallery match"):
            reid_scores(q, qid, qcam, g, gid, gcam, ranks, chunk)
        return
    ours = reid_scores(torch.from_numpy(q), qid, qcam, g, gid, gcam, ranks, chunk)
    cmc, m, valid = ref_eval_market1501(distmat, qid, gid, qcam, gcam)
    assert ours["num_queries"] == valid and ours["map"] == pytest.approx(m, rel=1e-12)
    # a rank beyond the gallery finds every first match, as the last CMC entry does
    assert [ours[f"rank{r}"] for r in ranks] == pytest.approx([cmc[min(r, len(cmc)) - 1] for r in ranks], abs=1e-6)


@SETTINGS
@given(reid_case())
def test_reid_identity_names_do_not_matter(case):
    q, qid, qcam, g, gid, gcam = case
    if not ((gid[None] == qid[:, None]) & (gcam[None] != qcam[:, None])).any():
        return
    rename = np.random.default_rng(len(q)).permutation(1000)[:5]
    assert reid_scores(q, rename[qid], qcam, g, rename[gid], gcam) == reid_scores(q, qid, qcam, g, gid, gcam)


@SETTINGS
@given(reid_case(), st.sampled_from([np.nan, np.inf]), st.booleans())
def test_instance_scorers_refuse_non_finite_rows(case, bad, in_query):
    q, qid, qcam, g, gid, gcam = case
    x = (q if in_query else g).copy()
    row = len(x) - 1
    x[row, 0] = bad
    q, g = (x, g) if in_query else (q, x)
    name = "queries" if in_query else "db"
    with pytest.raises(ValueError, match=f"{name} must be finite: 1 rows hold NaN or inf, the first is row {row}"):
        revisited_scores(q, g, [{"easy": [0], "hard": [], "junk": []}] * len(q))
    with pytest.raises(ValueError, match=f"{'query' if in_query else 'gallery'} must be finite: 1 rows .* row {row}"):
        reid_scores(q, qid, qcam, g, gid, gcam)

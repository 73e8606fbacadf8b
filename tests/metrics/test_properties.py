"""Property-based checks of the category retrieval metrics (hypothesis) against plain loops.

Embeddings are drawn on a grid (multiples of 1/256 up to +-4, or small integers, or copies of
a few vectors), so that every inner product is exact in float32 and float64 alike: equal
scores tie exactly, and the figures must equal the reference's to the last bit of a mean.
Cases: ties, duplicates, one class, singletons (no query with a positive), k beyond the
gallery, float64 inputs, NaN / inf rows; relabelling and item permutations.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from metricvision.metrics import cluster_scores, evaluate_retrieval, retrieval_scores
from metric_cases import KINDS, grid_vectors
from metric_references import ref_retrieval

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, database=None)


def draw_labels(rng: np.random.Generator, n: int, layout: str) -> np.ndarray:
    if layout == "one class":
        return np.zeros(n, np.int64)
    if layout == "singletons":
        return rng.permutation(n).astype(np.int64) * 7
    return rng.integers(0, max(1, n // 3), n).astype(np.int64)


@st.composite
def retrieval_case(draw, max_n: int = 40):
    n = draw(st.integers(2, max_n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = grid_vectors(rng, n, draw(st.integers(1, 5)), draw(st.sampled_from(KINDS)), draw(st.sampled_from([np.float32, np.float64])))
    y = draw_labels(rng, n, draw(st.sampled_from(["classes", "classes", "one class", "singletons"])))
    ks = tuple(sorted(set(draw(st.lists(st.integers(1, n + 5), min_size=1, max_size=4)))))
    return x, y, ks, rng


def assert_same(ours: dict, ref: dict) -> None:
    assert ours.keys() == ref.keys()
    for name in ref:
        assert ours[name] == pytest.approx(ref[name], rel=1e-12, abs=1e-12), name


def no_ties(q: np.ndarray, r: np.ndarray, loo: bool) -> bool:
    s = q.astype(np.float64) @ r.astype(np.float64).T
    if loo:
        np.fill_diagonal(s, np.nan)
    return all(len(np.unique(row[~np.isnan(row)])) == np.count_nonzero(~np.isnan(row)) for row in s)


@SETTINGS
@given(retrieval_case())
def test_leave_one_out_equals_the_pml_loop(case):
    x, y, ks, _ = case
    assert_same(retrieval_scores(x, y, ks=ks), ref_retrieval(x, y, ks=ks))


@SETTINGS
@given(retrieval_case(), st.integers(1, 30))
def test_queries_against_references_equal_the_pml_loop(case, n_queries):
    x, y, ks, rng = case
    q = grid_vectors(rng, n_queries, x.shape[1], "integers", x.dtype)
    qy = rng.choice(np.r_[np.unique(y), 10**6], n_queries)  # some queries have no relevant reference
    assert_same(retrieval_scores(q, qy, x, y, ks=ks), ref_retrieval(q, qy, x, y, ks=ks))


@SETTINGS
@given(retrieval_case())
def test_relabelling_never_changes_the_figures(case):
    """Class names are names: any renaming, ties or not (the issue: up to 0.31 on Recall@8)."""
    x, y, ks, rng = case
    classes = np.unique(y)
    rename = dict(zip(classes.tolist(), rng.choice(10**6, len(classes), replace=False).tolist()))
    renamed = np.array([rename[v] for v in y.tolist()], np.int64)
    assert_same(retrieval_scores(x, renamed, ks=ks), retrieval_scores(x, y, ks=ks))  # up to the order of the sums


@SETTINGS
@given(retrieval_case())
def test_item_permutation_changes_nothing_without_ties_and_follows_the_index_with_ties(case):
    x, y, ks, rng = case
    p = rng.permutation(len(y))
    permuted = retrieval_scores(x[p], y[p], ks=ks)
    assert_same(permuted, ref_retrieval(x[p], y[p], ks=ks))
    if no_ties(x, x, loo=True):
        assert_same(permuted, retrieval_scores(x, y, ks=ks))


def test_the_issue_case_of_26_distinct_vectors():
    """300 items, 26 distinct vectors: renaming the classes moved Recall@8 by up to 0.31."""
    rng = np.random.default_rng(0)
    x = grid_vectors(rng, 300, 8, "integers", np.float32)[:26][rng.integers(0, 26, 300)]
    y = rng.integers(0, 12, 300)
    ref = ref_retrieval(x, y)
    for rename in (np.arange(12), np.arange(12)[::-1], rng.permutation(12)):
        assert_same(retrieval_scores(x, rename[y]), ref)


@SETTINGS
@given(retrieval_case(max_n=20), st.sampled_from([np.nan, np.inf, -np.inf]))
def test_non_finite_rows_are_refused_with_the_first_row(case, bad):
    x, y, ks, rng = case
    rows = np.sort(rng.choice(len(y), rng.integers(1, len(y) + 1), replace=False))
    x = x.copy()
    x[rows, rng.integers(0, x.shape[1])] = bad
    with pytest.raises(ValueError, match=f"{len(rows)} rows hold NaN or inf, the first is row {rows[0]}"):
        retrieval_scores(x, y, ks=ks)
    with pytest.raises(ValueError, match=f"references must be finite: {len(rows)} rows"):
        retrieval_scores(np.zeros((1, x.shape[1])), y[:1], x, y, ks=ks)


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(st.integers(1, 30), st.integers(0, 2**32 - 1), st.sampled_from(["one class", "singletons"]))
def test_degenerate_clusterings_score_one_like_sklearn(n, seed, layout):
    rng = np.random.default_rng(seed)
    x = grid_vectors(rng, n, 3, "duplicates", np.float32)
    out = cluster_scores(x, draw_labels(rng, n, layout))
    assert out == {"nmi": 1.0, "ami": 1.0}


def test_evaluate_retrieval_with_duplicates_and_one_class():
    x = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)
    out = evaluate_retrieval(x, np.zeros(12, int), ks=(1, 20))
    assert out["recall@20"] == out["map@r"] == out["nmi"] == out["ami"] == 1.0

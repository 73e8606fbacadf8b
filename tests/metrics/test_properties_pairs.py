"""Property-based checks of the pair and class-level metrics: TAR@FAR against scikit-learn's
ROC, FPR95 against HardNet's loop, the open-set F-measure against OLTR's, few-shot accuracy
against a loop over the same episodes; ties, one-sided inputs, float64, NaN."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from metricvision.metrics import few_shot_accuracy, fpr_at_recall, open_set_f_measure, tar_at_far
from metric_references import ref_f_measure, ref_fpr95, ref_tar_at_far

SETTINGS = settings(max_examples=50, deadline=None, derandomize=True, database=None)


@st.composite
def pairs(draw):
    """(sims (P,), same (P,)): small-integer similarities (many ties) or a fine grid, float32/64."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(2, 60))
    same = rng.random(n) < draw(st.floats(0.1, 0.9))
    same[:2] = [True, False]  # both kinds present
    levels = draw(st.sampled_from([3, 10, 4096]))
    sims = (rng.integers(1, levels + 1, n) + same * rng.integers(0, levels // 2 + 1)) / levels  # > 0 as HardNet assumes
    return sims.astype(draw(st.sampled_from([np.float32, np.float64]))), same


@SETTINGS
@given(pairs(), st.floats(0, 1), st.integers(0, 60), st.booleans())
def test_tar_at_far_equals_the_roc_curve(case, far, allowed, exact_fraction):
    sims, same = case
    if exact_fraction:  # far = m / impostors exactly, where floor(far * impostors) may give m - 1
        far = min(allowed, int((~same).sum())) / int((~same).sum())
    assert tar_at_far(sims, same, far) == ref_tar_at_far(sims, same, far)


@SETTINGS
@given(pairs(), st.floats(0, 1))
def test_tar_at_far_does_not_depend_on_the_pair_order(case, far):
    sims, same = case
    p = np.random.default_rng(len(sims)).permutation(len(sims))
    assert tar_at_far(sims[p], same[p], far) == tar_at_far(sims, same, far)


@SETTINGS
@given(pairs())
def test_fpr95_equals_hardnet(case):
    sims, same = case
    assert fpr_at_recall(sims, same) == pytest.approx(ref_fpr95(same.astype(int), sims.astype(np.float64)), rel=1e-12)


@SETTINGS
@given(pairs(), st.sampled_from([np.nan, np.inf, -np.inf]))
def test_pair_metrics_refuse_non_finite_similarities(case, bad):
    sims, same = case
    sims = sims.copy()
    sims[1:] = np.where(np.arange(1, len(sims)) % 3 == 0, bad, sims[1:])
    bad_rows = np.flatnonzero(~np.isfinite(sims))
    if not len(bad_rows):
        return
    message = f"sims must be finite: {len(bad_rows)} rows hold NaN or inf, the first is row {bad_rows[0]}"
    with pytest.raises(ValueError, match=message):
        fpr_at_recall(sims, same)
    with pytest.raises(ValueError, match=message):
        tar_at_far(sims, same, 0.1)


@st.composite
def open_set_case(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, classes = draw(st.integers(1, 50)), draw(st.integers(1, 5))
    labels = rng.integers(-1, classes, n)
    pred = np.where(rng.random(n) < draw(st.floats(0, 1)), labels, rng.integers(-1, classes, n))
    return pred, labels


@SETTINGS
@given(open_set_case())
def test_open_set_f_measure_equals_oltr(case):
    pred, labels = case
    known = labels != -1
    if not (pred[known] == labels[known]).any():  # OLTR divides 0 by 0 (or reads F = 0)
        assert open_set_f_measure(pred, labels) == 0.0
        return
    assert open_set_f_measure(pred, labels) == pytest.approx(ref_f_measure(pred, labels), rel=1e-12)


@SETTINGS
@given(open_set_case())
def test_open_set_f_measure_ignores_class_names_and_order(case):
    pred, labels = case
    rename = np.r_[-1, np.random.default_rng(len(pred)).permutation(100)[:5]]  # -1 stays "unknown"
    p = np.random.default_rng(len(pred) + 1).permutation(len(pred))
    assert open_set_f_measure(rename[pred + 1][p], rename[labels + 1][p]) == pytest.approx(open_set_f_measure(pred, labels), rel=1e-12)


@settings(max_examples=20, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 4), st.integers(1, 3), st.integers(1, 4), st.sampled_from([torch.float32, torch.float64]))
def test_few_shot_accuracy_equals_a_loop_over_the_same_episodes(seed, n_way, k_shot, n_query, dtype):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_way + 2), k_shot + n_query + 1)
    x = torch.as_tensor(rng.integers(-2, 3, (len(labels), 3)), dtype=dtype)  # ties and duplicates
    out = few_shot_accuracy(x, labels, n_way, k_shot, n_query, episodes=7, seed=seed)
    draws, accs = np.random.default_rng(seed), []
    members = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    for _ in range(7):
        picked = [draws.permutation(members[c])[: k_shot + n_query] for c in draws.choice(np.unique(labels), n_way, replace=False)]
        protos = torch.stack([x[p[:k_shot]].mean(0) for p in picked])
        right = sum(int((torch.cdist(x[p[k_shot:]], protos).argmin(1) == w).sum()) for w, p in enumerate(picked))
        accs.append(right / (n_way * n_query))
    assert out["accuracy"] == pytest.approx(float(np.mean(accs)), rel=1e-15, abs=1e-15)
    assert out["ci95"] == pytest.approx(1.96 * float(np.std(accs)) / np.sqrt(7), rel=1e-12, abs=1e-15)

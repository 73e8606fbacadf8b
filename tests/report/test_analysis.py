"""Report analyses against references: scikit-learn's precision-recall curve and plain loops."""
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_curve

from metricvision.report.analysis import failing_classes, neighbours, precision_recall


@pytest.fixture()
def points():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 40)
    centres = rng.normal(size=(6, 8))
    x = centres[labels] + rng.normal(scale=1.2, size=(40, 8))
    return torch.nn.functional.normalize(torch.tensor(x, dtype=torch.float32), dim=1), labels


def test_neighbours_leave_one_out(points):
    x, _ = points
    scores, ids = neighbours(x, 39)
    sim = (x @ x.T).numpy()
    np.fill_diagonal(sim, -np.inf)
    assert not (ids == np.arange(40)[:, None]).any()
    np.testing.assert_allclose(scores, -np.sort(-sim, axis=1)[:, :39], atol=1e-6)


def test_precision_recall_equals_sklearn_per_query(points):
    x, labels = points
    scores, ids = neighbours(x, 39)
    grid, got = precision_recall(ids, labels, levels=11)
    ref = []
    for q in range(40):
        y = labels[ids[q]] == labels[q]
        if not y.any():
            continue
        p, r, _ = precision_recall_curve(y, scores[q])
        p, r = p[:-1], r[:-1]  # sklearn's appended (recall 0, precision 1) is not a rank of the list
        ref.append([p[r >= level].max() for level in grid])
    np.testing.assert_allclose(got, np.mean(ref, axis=0), atol=1e-9)


def test_failing_classes_by_loop(points):
    x, labels = points
    _, ids = neighbours(x, 5)
    names = [f"class {c}" for c in labels]
    rows = failing_classes(ids, labels, names, top=6, confusions=2)
    for row in rows:
        qs = [q for q in range(40) if labels[q] == row["label"]]
        wrong = [labels[ids[q, 0]] for q in qs if labels[ids[q, 0]] != row["label"]]
        assert row["errors"] == len(wrong) and row["queries"] == len(qs)
        assert row["precision@1"] == pytest.approx(1 - len(wrong) / len(qs))
        assert [n for n, _ in row["confused_with"]] == [f"class {c}" for c, _ in Counter(wrong).most_common(2)]
    assert [r["errors"] for r in rows] == sorted((r["errors"] for r in rows), reverse=True)

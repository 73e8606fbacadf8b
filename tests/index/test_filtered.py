import numpy as np
import pytest

from metricvision.index import FlatIndex, column_filter, create_index, filtered_search


def exact_subset(x: np.ndarray, ids: np.ndarray, keep: np.ndarray, q: np.ndarray, k: int):
    ref = FlatIndex(x.shape[1])
    ref.add(x[keep], ids[keep])
    return ref.search(q, k)


@pytest.mark.parametrize("fraction", [0.5, 0.02, 0.001])
def test_allowed_ids_equal_exact_search_on_the_subset(data, fraction):
    x, q = data
    ids = np.arange(len(x)) + 1000
    index = FlatIndex(32)
    index.add(x, ids)
    rng = np.random.default_rng(1)
    allowed = rng.choice(ids, max(1, int(fraction * len(ids))), replace=False)
    s, i = filtered_search(index, q, 10, set(allowed.tolist()), overfetch=2)
    rs, ri = exact_subset(x, ids, np.isin(ids, allowed), q, 10)
    np.testing.assert_array_equal(i, ri)  # includes the -1 padding when fewer than k are allowed
    np.testing.assert_allclose(s, rs, atol=1e-5)


def test_column_predicate(data):
    x, q = data
    ids = np.arange(len(x))
    color = np.array(["red", "green", "blue"])[ids % 3]
    index = FlatIndex(32)
    index.add(x, ids)
    for condition in ["red", {"red", "blue"}, lambda v: v != "green"]:
        keep = color == "red" if condition == "red" else color != "green"
        _, i = filtered_search(index, q, 5, column_filter(ids, color, condition))
        np.testing.assert_array_equal(i, exact_subset(x, ids, keep, q, 5)[1])


def test_faiss_index_filtered(data):
    pytest.importorskip("faiss")
    x, q = data
    index = create_index("HNSW16", 32)
    index.add(x)
    index.remove(np.arange(0, len(x), 4))
    _, i = filtered_search(index, q, 10, lambda ids: ids % 2 == 0)
    assert ((i % 2 == 0) & (i % 4 != 0)).all()
    _, ri = exact_subset(x, np.arange(len(x)), (np.arange(len(x)) % 4) == 2, q, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, ri)]) >= 0.9


def test_errors():
    with pytest.raises(ValueError, match="same length"):
        column_filter([1, 2], ["a"], "a")
    with pytest.raises(ValueError, match="overfetch"):
        filtered_search(FlatIndex(2), np.zeros((1, 2)), 1, [0], overfetch=0)

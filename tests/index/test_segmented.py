import numpy as np
import pytest

from metricvision.index import FlatIndex, create_index, filtered_search
from metricvision.index.segmented import SegmentedIndex


def exact(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int):
    ref = FlatIndex(x.shape[1])
    ref.add(x, ids)
    return ref.search(q, k)


def split(data, base_spec: str = "Flat"):
    """Vectors 0..499 in the base, 500..599 and 600..649 in two segments, 12 tombstones across them."""
    x, q = data
    x, ids = x[:650], np.arange(650)
    base = create_index(base_spec, x.shape[1], params="nprobe=8" if "IVF" in base_spec else None)
    base.add(x[:500], ids[:500])
    segments = []
    for a, b in ((500, 600), (600, 650)):
        seg = FlatIndex(x.shape[1])
        seg.add(x[a:b], ids[a:b])
        segments.append(seg)
    dead = np.array([0, 3, 7, 250, 499, 500, 501, 599, 600, 620, 649, 100])
    return SegmentedIndex(base, segments, dead), x, ids, q, ~np.isin(ids, dead)


@pytest.mark.parametrize("base_spec", ["Flat", "IVF8,Flat"])
def test_base_plus_segments_minus_tombstones_equals_exact(data, base_spec):
    if base_spec != "Flat":
        pytest.importorskip("faiss")
    index, x, ids, q, live = split(data, base_spec)
    assert len(index) == live.sum()
    s, i = index.search(q, 10)
    rs, ri = exact(x[live], ids[live], q, 10)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(s, rs, atol=1e-5)


@pytest.mark.parametrize("base_spec", ["Flat", "IVF8,Flat"])
def test_filter_inside_each_part_equals_exact_filter(data, base_spec):
    if base_spec != "Flat":
        pytest.importorskip("faiss")
    index, x, ids, q, live = split(data, base_spec)
    allowed = np.arange(0, 650, 7)  # includes tombstoned ids (0, 7, 100...): they stay out
    s, i = filtered_search(index, q, 10, allowed)
    keep = live & np.isin(ids, allowed)
    rs, ri = exact(x[keep], ids[keep], q, 10)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(s, rs, atol=1e-5)


@pytest.mark.parametrize("n_allowed", [0, 3, 300])
def test_flat_search_allowed_scores_only_the_allowed_rows(data, n_allowed):
    x, q = data
    ids = np.arange(len(x)) * 3 + 5
    index = FlatIndex(x.shape[1])
    index.add(x, ids)
    allowed = np.random.default_rng(0).choice(ids, n_allowed, replace=False)
    s, i = index.search_allowed(q, 10, allowed)
    if n_allowed == 0:
        assert (i == -1).all() and np.isneginf(s).all()
        return
    keep = np.isin(ids, allowed)
    rs, ri = exact(x[keep], ids[keep], q, 10)
    np.testing.assert_array_equal(i, ri)  # -1 padded when fewer than k are allowed
    np.testing.assert_allclose(s, rs, atol=1e-5)


def test_errors(data):
    x, _ = data
    with pytest.raises(ValueError, match="segment dimension 3"):
        SegmentedIndex(FlatIndex(x.shape[1]), [FlatIndex(3)])
    with pytest.raises(ValueError, match="k must be >= 1"):
        SegmentedIndex(FlatIndex(4)).search(np.zeros((1, 4)), 0)

"""Filters applied inside the faiss search (ID selectors) equal exact search over the allowed ids."""
import numpy as np
import pytest

from metricvision.index import filtered_search
from metricvision.index.flat import FlatIndex

pytest.importorskip("faiss")
# as pytorch-metric-learning does: this replaces faiss' search with a wrapper that has no params=
import faiss.contrib.torch_utils  # noqa: E402,F401

from metricvision.index.faiss_index import FaissIndex  # noqa: E402


@pytest.mark.parametrize("spec, params", [("Flat", None), ("HNSW16", "efSearch=500"), ("IVF4,Flat", "nprobe=4")])
def test_filter_inside_the_search_equals_exact(spec, params):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    ids = np.arange(1000, 1500)
    allowed = rng.choice(ids, 40, replace=False)
    keep = np.isin(ids, allowed)
    flat = FlatIndex(16)
    flat.add(x[keep], ids[keep])
    q = rng.standard_normal((5, 16)).astype(np.float32)
    index = FaissIndex(16, spec, params=params)
    index.add(x, ids)
    got, want = filtered_search(index, q, 10, allowed), flat.search(q, 10)
    assert np.array_equal(got[1], want[1]) and np.allclose(got[0], want[0], atol=1e-5)
    index.remove(allowed[:5])
    assert not np.isin(filtered_search(index, q, 10, allowed)[1], allowed[:5]).any()

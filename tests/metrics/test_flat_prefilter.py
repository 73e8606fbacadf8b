"""The bfloat16 candidate stage of FlatIndex returns what the plain float32 search returns."""
import numpy as np
import pytest

from metricvision.index.flat import FlatIndex


@pytest.mark.parametrize("k", [1, 7, 300])
def test_bf16_prefilter_equals_float32_search(k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((2000, 24)).astype(np.float32)
    x[:1000] /= np.linalg.norm(x[:1000], axis=1, keepdims=True)  # mixed norms exercise the bound
    q = rng.standard_normal((100, 24)).astype(np.float32)
    fast, plain = FlatIndex(24, prefilter="bf16", db_chunk=128, query_chunk=32), FlatIndex(24, prefilter="none")
    for index in (fast, plain):
        index.add(x, np.arange(2000) + 10)
    (s1, i1), (s0, i0) = fast.search(q, k), plain.search(q, k)
    np.testing.assert_allclose(s1, s0, rtol=0, atol=1e-5)
    assert (i1 == i0).mean() > 0.999  # only float32 near-ties may swap


def test_bf16_prefilter_small_index_pads():
    index = FlatIndex(4, prefilter="bf16")
    index.add(np.eye(4, dtype=np.float32))
    s, i = index.search(np.eye(4, dtype=np.float32)[:2], 6)
    assert i[0, 0] == 0 and i[1, 0] == 1
    assert (i[:, 4:] == -1).all() and np.isinf(s[:, 4:]).all()


def test_prefilter_name_is_checked():
    with pytest.raises(ValueError, match="prefilter must be one of"):
        FlatIndex(4, prefilter="fp8")

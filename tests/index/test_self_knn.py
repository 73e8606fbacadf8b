"""self_knn (symmetric exact leave-one-out k-NN) against a float64 brute-force loop."""
import numpy as np
import pytest
import torch

from metricvision.index.self_knn import self_knn


def brute(x: np.ndarray, k: int):
    """Float64 top-k of every row among the others -> (scores, ids)."""
    s = x.astype(np.float64) @ x.astype(np.float64).T
    np.fill_diagonal(s, -np.inf)
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, 1), ids


def collect(x: np.ndarray, k: int, **kw):
    starts, scores, ids = [], [], []
    for s0, sc, ii in self_knn(x, k, **kw):
        starts.append(s0)
        scores.append(sc)
        ids.append(ii)
    assert starts == sorted(starts) and starts[0] == 0
    return np.concatenate(scores), np.concatenate(ids)


@pytest.mark.parametrize(
    "n,dim,k,block,precision",
    [(1000, 16, 10, 256, "bf16"), (1000, 16, 10, 256, "fp32"), (777, 8, 40, 128, "bf16"), (3000, 32, 50, 640, "auto"), (300, 3, 250, 64, "bf16")],
)
def test_equals_brute_force(n, dim, k, block, precision):
    rng = np.random.default_rng(n + k)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x[: n // 2] /= np.linalg.norm(x[: n // 2], axis=1, keepdims=True)  # mixed norms exercise the bound
    ref_s, ref_i = brute(x, k)
    scores, ids = collect(x, k, block=block, precision=precision)
    np.testing.assert_allclose(scores, ref_s, rtol=0, atol=2e-5)
    assert not (ids == np.arange(n)[:, None]).any()
    # the returned ids carry the returned scores (only float32 near-ties may swap places)
    exact = np.einsum("nd,nkd->nk", x.astype(np.float64), x[ids].astype(np.float64))
    np.testing.assert_allclose(exact, scores, rtol=0, atol=2e-5)
    assert (ids == ref_i).mean() > 0.99


def test_negative_thresholds():
    """Low dimension and k close to n: most k-th best scores are negative."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 2)).astype(np.float32)
    scores, _ = collect(x, 190, block=64, precision="bf16")
    assert (scores[:, -1] < 0).mean() > 0.5
    np.testing.assert_allclose(scores, brute(x, 190)[0], rtol=0, atol=2e-5)


def test_all_ties_widen_the_lists():
    """Identical vectors: every score ties, the lists overflow and widen, nothing is lost."""
    x = np.ones((500, 8), np.float32)
    scores, ids = collect(x, 7, block=128)
    np.testing.assert_allclose(scores, 8.0)
    assert (ids >= 0).all() and not (ids == np.arange(500)[:, None]).any()
    assert all(len(set(row)) == 7 for row in ids.tolist())


def test_k_beyond_n_pads():
    x = np.eye(4, dtype=np.float32)
    scores, ids = collect(x, 6)
    assert (ids[:, 3:] == -1).all() and np.isinf(scores[:, 3:]).all()
    assert sorted(ids[0, :3].tolist()) == [1, 2, 3]


def test_accepts_torch_and_checks_arguments():
    x = torch.nn.functional.normalize(torch.randn(100, 4), dim=1)
    scores, _ = collect(x, 3)
    np.testing.assert_allclose(scores, brute(x.numpy(), 3)[0], atol=2e-5)
    with pytest.raises(ValueError, match="precision must be one of"):
        next(self_knn(x, 3, precision="fp8"))
    with pytest.raises(ValueError, match="k must be >= 1"):
        next(self_knn(x, 0))


def test_non_finite_rows_are_named():
    x = np.ones((10, 4), np.float32)
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="1 rows hold NaN or inf, the first is row 3"):
        next(self_knn(x, 2))


def quantized(n: int, distinct: int, dim: int, seed: int) -> np.ndarray:
    """(n, dim) float32 copies of ``distinct`` small-integer vectors: every dot product is
    exact in any summation order, so equal scores tie exactly."""
    rng = np.random.default_rng(seed)
    return rng.integers(-3, 4, (distinct, dim)).astype(np.float32)[rng.integers(0, distinct, n)]


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_ties_are_broken_by_id_whatever_the_row_order(precision):
    x = quantized(300, 26, 6, seed=0)
    ref_s, ref_i = brute(x, 8)  # a stable sort over the rows in index order
    order = np.random.default_rng(1).permutation(300)
    scores, ids = collect(x[order], 8, block=64, precision=precision, ids=order)
    back = np.argsort(order)
    np.testing.assert_array_equal(ids[back], ref_i)
    np.testing.assert_array_equal(scores[back], ref_s)
    with pytest.raises(ValueError, match=r"ids must have one entry per row, shape \(300,\)"):
        next(self_knn(x, 2, ids=order[:5]))

import numpy as np
import pytest

from metricvision.index import FlatIndex
from metricvision.index.rerank import Diffusion, alpha_qe_search, alpha_query_expansion, top_k


def test_alpha_qe_equals_loop(data):
    x, q = data
    ranks = FlatIndex(32)
    ranks.add(x)
    _, r = ranks.search(q, 5)
    r[0, 3:] = -1  # padded row
    ours = alpha_query_expansion(q, x, r, n=4, alpha=3.0)
    for row in range(len(q)):
        v = q[row].astype(np.float64).copy()
        for j in r[row, :4]:
            if j >= 0:
                v += max(float(q[row] @ x[j]), 0.0) ** 3 * x[j]
        np.testing.assert_allclose(ours[row], v / np.linalg.norm(v), atol=1e-5)


def test_alpha_qe_search_is_a_ranked_list_and_n0_is_plain_search(data):
    x, q = data
    exact = FlatIndex(32)
    exact.add(x)
    s0, i0 = alpha_qe_search(q, x, 10, n=0)
    s1, i1 = exact.search(q, 10)
    np.testing.assert_array_equal(i0, i1)
    s, i = alpha_qe_search(q, x, 10)
    assert i.shape == (len(q), 10) and (np.diff(s, axis=1) <= 1e-6).all()


def reference_diffusion(x, q, k, alpha, gamma, query_k):
    """Dense closed form f = (I - alpha W)^-1 y, graph built with plain loops."""
    n = len(x)
    sim = x @ x.T
    knn = [set(np.argsort(-sim[i])[: k + 1]) - {i} for i in range(n)]
    a = np.zeros((n, n))
    for i in range(n):
        for j in knn[i]:
            if i in knn[j]:
                a[i, j] = max(sim[i, j], 0) ** gamma
    d = a.sum(1)
    dm = np.where(d > 0, 1 / np.sqrt(np.maximum(d, 1e-300)), 0)
    w = dm[:, None] * a * dm[None]
    out = []
    for row in q:
        s = x @ row
        y = np.zeros(n)
        for j in np.argsort(-s)[:query_k]:
            y[j] = max(s[j], 0) ** gamma
        out.append(np.linalg.solve(np.eye(n) - alpha * w, y))
    return np.array(out)


def test_diffusion_equals_dense_solve(data):
    x, q = data[0][:300], data[1][:5]
    diffusion = Diffusion(k=10, alpha=0.9, gamma=3, query_k=5, maxiter=500, tol=1e-10).fit(x)
    ref = reference_diffusion(x.astype(np.float64), q.astype(np.float64), 10, 0.9, 3, 5)
    np.testing.assert_allclose(diffusion.scores(q), ref, rtol=1e-3, atol=1e-5)
    s, i = diffusion.search(q, 20)
    np.testing.assert_array_equal(i[:, :5], np.argsort(-ref, axis=1)[:, :5])


def test_diffusion_follows_the_manifold():
    """Two parallel arcs: far along its own arc beats near across the gap only after diffusion."""
    x, labels = _arcs()
    q = x[:1]
    exact = FlatIndex(3)
    exact.add(x)
    _, plain = exact.search(q, 100)
    _, diffused = Diffusion(k=5, alpha=0.99, query_k=3, maxiter=200).fit(x).search(q, 100)
    assert (labels[diffused[0]] == 0).mean() > (labels[plain[0]] == 0).mean() + 0.2


def test_top_k_and_errors():
    s, i = top_k(np.array([[0.1, 0.5, 0.3]]), 4)
    np.testing.assert_array_equal(i, [[1, 2, 0, -1]])
    with pytest.raises(ValueError, match="alpha"):
        Diffusion(alpha=1.0)
    with pytest.raises(RuntimeError, match="fit"):
        Diffusion().search(np.zeros((1, 3), np.float32), 2)
    with pytest.raises(ValueError, match="ranks"):
        alpha_query_expansion(np.zeros((2, 3)), np.zeros((4, 3)), np.zeros((2, 1)), n=3)


def _arcs():
    """Two parallel arcs of 200 unit vectors each (the second lifted 0.08 off the plane) and their labels."""
    t = np.linspace(0, np.pi / 2, 200)
    arc = np.stack([np.cos(t), np.sin(t), np.zeros_like(t)], 1)
    other = arc.copy()
    other[:, 2] = 0.08
    x = np.concatenate([arc, other]).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.repeat([0, 1], 200)


def test_revisited_scores_rerank_by_diffusion_and_alpha_qe():
    """revisited mAP with rerank= equals revisited mAP of the re-ranked lists; diffusion helps on a manifold."""
    from metricvision.index.rerank import expanded_queries
    from metricvision.metrics import revisited_scores

    x, labels = _arcs()
    q = x[:1]
    gnd = [{"easy": list(np.flatnonzero(labels == 0)[100:150]), "hard": list(np.flatnonzero(labels == 0)[150:]), "junk": []}]
    plain = revisited_scores(q, x, gnd)
    params = {"k": 5, "alpha": 0.99, "query_k": 3, "maxiter": 200}
    diffused = revisited_scores(q, x, gnd, rerank="diffusion", rerank_params=params)
    assert diffused["medium_map"] > plain["medium_map"] + 0.1
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:4] + 0.3 * rng.normal(size=(4, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    gnd = [{"easy": list(rng.choice(60, 6, replace=False)), "hard": [i], "junk": []} for i in range(4)]
    qe = revisited_scores(q, x, gnd, rerank="alpha_qe", rerank_params={"n": 5, "alpha": 3.0})
    assert qe == revisited_scores(expanded_queries(q, x, 5, 3.0), x, gnd)
    assert qe != revisited_scores(q, x, gnd)
    with pytest.raises(ValueError, match="rerank must be one of none, alpha_qe, diffusion, got 'dba'"):
        revisited_scores(q, x, gnd, rerank="dba")

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch

from metricvision.supervision import SUPERVISIONS
from metricvision.supervision.base import keep_fraction_of_labels
from metricvision.index.diffusion import conjugate_gradient, diffuse
from metricvision.supervision.graph import knn_graph, normalize_affinity
from metricvision.supervision.propagation import LabelPropagation, propagate_labels


def _two_clusters(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 8, generator=g) * 0.05 + torch.tensor([1.0] + [0.0] * 7)
    b = torch.randn(n, 8, generator=g) * 0.05 + torch.tensor([0.0, 1.0] + [0.0] * 6)
    return torch.cat([a, b]), torch.cat([torch.zeros(n), torch.ones(n)]).long()


def test_knn_graph_matches_loop():
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(1))
    W = knn_graph(x, k=4, gamma=3.0).to_dense()
    xn = torch.nn.functional.normalize(x, dim=1)
    S = xn @ xn.T
    ref = torch.zeros(30, 30)
    for i in range(30):
        s = S[i].clone()
        s[i] = -float("inf")
        for j in s.topk(4).indices:
            ref[i, j] = S[i, j].clamp_min(0) ** 3
    assert torch.allclose(W, ref + ref.T, atol=1e-5)
    assert torch.all(W.diagonal() == 0)
    assert torch.allclose(knn_graph(x, k=4, gamma=3.0, kind="directed").to_dense(), ref, atol=1e-5)
    mutual = knn_graph(x, k=4, gamma=3.0, kind="mutual").to_dense()
    want = torch.where((ref > 0) & (ref.T > 0), ref, torch.zeros_like(ref))
    assert torch.allclose(mutual, want, atol=1e-5) and torch.equal(mutual, mutual.T)
    assert 0 < int((want > 0).sum()) < int((ref > 0).sum())
    with pytest.raises(ValueError, match="kind must be one of .*, got 'reciprocal'"):
        knn_graph(x, k=4, kind="reciprocal")


def test_cg_equals_direct_solve_and_scipy():
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(2))
    Wn = normalize_affinity(knn_graph(x, k=5))
    dense = Wn.to_dense().double()
    d = dense.sum(1)
    Y = torch.randn(50, 3, generator=torch.Generator().manual_seed(3))
    Z = diffuse(Wn.double(), Y.double(), alpha=0.9, tol=1e-12, max_iter=500)
    A = torch.eye(50, dtype=torch.float64) - 0.9 * dense
    assert torch.allclose(Z, torch.linalg.solve(A, Y.double()), atol=1e-8)
    sp = scipy.sparse.csr_matrix(A.numpy())
    z0, _ = scipy.sparse.linalg.cg(sp, Y[:, 0].double().numpy(), rtol=1e-12, maxiter=500)
    assert np.allclose(Z[:, 0].numpy(), z0, atol=1e-6)
    assert torch.all(d >= 0)


def test_cg_zero_rhs_column():
    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    B = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    X = conjugate_gradient(lambda v: A @ v, B, tol=1e-10, max_iter=10)
    assert torch.allclose(A @ X, B, atol=1e-5)
    assert torch.all(X[:, 1] == 0)


def test_propagation_recovers_two_clusters():
    x, y = _two_clusters()
    given = torch.full_like(y, -1)
    given[0], given[40] = 0, 1
    out = propagate_labels(x, given, num_classes=2, k=10)
    assert torch.equal(out.labels, y)
    assert out.certainty[given < 0].min() > 0.5
    assert torch.allclose(out.class_weights, torch.ones(2))


def test_propagation_certainty_low_between_clusters():
    x, y = _two_clusters()
    mid = (x[0] + x[40]) / 2
    x = torch.cat([x, mid[None]])
    given = torch.full((81,), -1)
    given[0], given[40] = 0, 1
    out = propagate_labels(x, given, num_classes=2, k=10)
    assert out.certainty[80] < out.certainty[1:40].min()


def test_class_balance_weights_are_inverse_frequency():
    x, y = _two_clusters()
    x, y = x[:50], y[:50]  # 40 of class 0, 10 of class 1
    given = torch.full_like(y, -1)
    given[0], given[45] = 0, 1
    out = propagate_labels(x, given, num_classes=2, k=5)
    assert torch.equal(out.labels, y)
    assert torch.allclose(out.class_weights, torch.tensor([50 / 80, 50 / 20]))


def test_label_propagation_supervision_refresh_and_targets():
    x, y = _two_clusters()
    given = torch.full_like(y, -1)
    given[:3], given[40:43] = 0, 1
    sup = SUPERVISIONS.create("label_propagation", labels=given, k=10, class_balance=False)
    before = sup.lookup(torch.arange(80))
    assert torch.equal(before.labels, given) and before.weights[3:40].sum() == 0
    logs = sup.refresh(x)
    t = sup.lookup(torch.tensor([1, 10, 50]))
    assert t.labels.tolist() == [0, 0, 1]
    assert t.weights[0] == 1.0 and 0.5 < float(t.weights[1]) <= 1.0
    assert logs["pseudo_certainty"] > 0.5
    rel = sup.relevance(torch.tensor([1, 10, 50]))
    assert rel.tolist() == [[-1, 1, 0], [1, -1, 0], [0, 0, -1]]


def test_keep_leaves_the_least_certain_pseudo_labels_unlabeled():
    x, y = _two_clusters()
    x[20:30] = (x[20:30] + x[60:70]) / 2  # ten points between the clusters: the least certain
    given = torch.full_like(y, -1)
    given[:3], given[40:43] = 0, 1
    everything = SUPERVISIONS.create("label_propagation", labels=given, k=10, class_balance=False)
    half = SUPERVISIONS.create("label_propagation", labels=given, k=10, class_balance=False, keep=0.5)
    everything.refresh(x), half.refresh(x)
    unlabeled = given < 0
    dropped = half.labels_ == -1
    assert int(dropped.sum()) == int(unlabeled.sum()) // 2 and not bool((dropped & ~unlabeled).any())
    assert bool((half.weights_[dropped] == 0).all())
    kept = unlabeled & ~dropped  # the kept ones are the more certain half, with the full run's labels
    assert everything.weights_[kept].min() >= everything.weights_[dropped].max()
    assert torch.equal(half.labels_[~dropped], everything.labels_[~dropped])
    assert bool(dropped[20:30].all())
    with pytest.raises(ValueError, match="keep must be in"):
        LabelPropagation(given, keep=0.0)


def test_label_propagation_needs_labels():
    try:
        LabelPropagation([-1, -1])
    except ValueError as e:
        assert "at least one labeled" in str(e)
    else:
        raise AssertionError("expected ValueError")


def test_keep_fraction_of_labels_per_class():
    labels = np.repeat(np.arange(5), 10)
    kept = keep_fraction_of_labels(labels, 0.2, seed=0)
    for c in range(5):
        assert (kept == c).sum() == 2
        assert np.all(labels[kept == c] == c)
    assert (keep_fraction_of_labels(np.repeat(np.arange(3), 3), 0.1) >= 0).sum() == 3
    kept = keep_fraction_of_labels(labels, 0.1, seed=0, per_class=False)
    assert (kept >= 0).sum() == 5 and np.all(labels[kept >= 0] == kept[kept >= 0])


def test_weighted_pk_batches_follow_weights_and_skip_unlabeled():
    from metricvision.supervision.base import weighted_pk_batches

    labels = torch.tensor([0, 0, 0, 1, 1, 1, -1, 2])
    weights = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    g = torch.Generator().manual_seed(0)
    batches = weighted_pk_batches(labels, weights, 4, 2, 50, g)
    drawn = torch.tensor([i for b in batches for i in b])
    assert not torch.isin(drawn, torch.tensor([1, 6, 7])).any()
    for b in batches:
        assert labels[b[0]] == labels[b[1]] and labels[b[2]] == labels[b[3]] and labels[b[0]] != labels[b[2]]


def test_partial_labels_supervision_binds_and_hides():
    sup = SUPERVISIONS.create("partial_labels", label_fraction=0.5, samples_per_class=2)
    sup.bind(np.repeat(np.arange(4), 4))
    assert int((sup.labels_ >= 0).sum()) == 8
    for b in sup.batches(4, 10, torch.Generator().manual_seed(0)):
        assert all(int(sup.labels_[i]) >= 0 for i in b)


def test_refresh_every_skips_epochs_between_refreshes():
    sup = SUPERVISIONS.create("label_propagation", refresh_every=3)
    assert [sup.refresh_due(e) for e in range(7)] == [True, False, False, True, False, False, True]
    assert not SUPERVISIONS.create("partial_labels").refresh_due(0)
    with pytest.raises(ValueError, match="refresh_every must be >= 1"):
        SUPERVISIONS.create("label_propagation", refresh_every=0)


def test_start_epoch_trains_on_the_labeled_samples_alone_until_it():
    sup = SUPERVISIONS.create("label_propagation", label_fraction=0.5, samples_per_class=2, start_epoch=2, refresh_every=2)
    assert [sup.refresh_due(e) for e in range(7)] == [False, False, True, False, True, False, True]
    sup.bind(np.repeat(np.arange(4), 4))
    for b in sup.batches(4, 10, torch.Generator().manual_seed(0)):  # before any refresh: labeled samples only
        assert all(int(sup.labels_[i]) >= 0 for i in b)
    with pytest.raises(ValueError, match="start_epoch must be >= 0"):
        SUPERVISIONS.create("label_propagation", start_epoch=-1)


def test_csr_matmul_equals_the_dense_product_with_empty_rows_in_both_precisions():
    from metricvision.index.csr_kernels import csr_matmul

    rng = np.random.default_rng(0)
    dense = rng.random((40, 30)) * (rng.random((40, 30)) < 0.2)
    dense[[3, 17]] = 0  # rows without entries
    csr = torch.from_numpy(dense).to_sparse_csr()
    parts = (csr.crow_indices().numpy(), csr.col_indices().numpy(), csr.values().numpy())
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((30, 7)).astype(dtype)
        out = csr_matmul(*parts, x, threads=2)
        assert out.dtype == dtype
        np.testing.assert_allclose(out, dense @ x, rtol=1e-5, atol=1e-5)


def test_diffuse_equals_the_dense_solve_of_i_minus_alpha_w():
    x = torch.nn.functional.normalize(torch.randn(120, 16, generator=torch.Generator().manual_seed(1)), dim=1)
    Wn = normalize_affinity(knn_graph(x, 8, 3.0))
    Y = torch.zeros(120, 3)
    Y[[0, 40, 80], [0, 1, 2]] = 1.0
    Z = diffuse(Wn, Y, alpha=0.9, tol=1e-10, max_iter=500)
    want = np.linalg.solve(np.eye(120) - 0.9 * Wn.to_dense().double().numpy(), Y.double().numpy())
    np.testing.assert_allclose(Z.numpy(), want, rtol=1e-4, atol=1e-6)

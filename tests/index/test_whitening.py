import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from metricvision.index.whitening import LearnedWhitening, PCAWhitening


def cirtorch_whitenlearn(X, qidxs, pidxs):
    """cirtorch whiten.py: whitenlearn (X is (D, N), columns are descriptors)."""
    m = X[:, qidxs].mean(axis=1, keepdims=True)
    df = X[:, qidxs] - X[:, pidxs]
    S = np.dot(df, df.T) / df.shape[1]
    P = np.linalg.inv(np.linalg.cholesky(S))
    df = np.dot(P, X - m)
    D = np.dot(df, df.T)
    eigval, eigvec = np.linalg.eig(D)
    order = eigval.argsort()[::-1]
    eigvec = eigvec[:, order]
    P = np.dot(eigvec.T, P)
    return m, P


def cirtorch_whitenapply(X, m, P, dimensions=None):
    dimensions = dimensions or P.shape[0]
    X = np.dot(P[:dimensions, :], X - m)
    return X / (np.linalg.norm(X, ord=2, axis=0, keepdims=True) + 1e-6)


@pytest.fixture
def descriptors():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((300, 12)) @ rng.standard_normal((12, 12))).astype(np.float32)


@pytest.mark.parametrize("dim", [None, 5])
def test_pca_whitening_equals_sklearn(descriptors, dim):
    ours = PCAWhitening(dim=dim, normalize=False).fit(descriptors).transform(descriptors)
    ref = PCA(n_components=dim, whiten=True).fit_transform(descriptors.astype(np.float64))
    signs = np.sign((ours * ref).sum(0))  # eigenvectors are defined up to sign
    np.testing.assert_allclose(ours * signs, ref, atol=1e-3)
    np.testing.assert_allclose(np.cov(ours, rowvar=False), np.eye(ours.shape[1]), atol=1e-3)


def test_shrinkage_interpolates_to_scaled_pca(descriptors):
    full = PCAWhitening(normalize=False).fit(descriptors)
    shrunk = PCAWhitening(shrinkage=1.0, normalize=False).fit(descriptors)
    out = shrunk.transform(descriptors)
    assert np.abs(np.cov(out, rowvar=False) - np.eye(12)).max() > 0.1  # no longer white
    np.testing.assert_allclose(np.linalg.norm(shrunk.projection_, axis=0), np.full(12, 1 / np.sqrt(full.eigenvalues_.mean())), rtol=1e-5)


@pytest.mark.parametrize("dim", [None, 6])
def test_learned_whitening_equals_cirtorch(descriptors, dim):
    rng = np.random.default_rng(1)
    q = rng.integers(0, 300, 200)
    pos = np.clip(q + rng.integers(-3, 4, 200), 0, 299)
    x = torch.from_numpy(descriptors)
    ours = LearnedWhitening(dim=dim).fit(x, np.stack([q, pos], 1)).transform(x)
    assert isinstance(ours, torch.Tensor) and ours.shape == (300, dim or 12)
    m, P = cirtorch_whitenlearn(descriptors.T.astype(np.float64), q, pos)
    ref = cirtorch_whitenapply(descriptors.T.astype(np.float64), m, P, dim).T
    np.testing.assert_allclose(ours.numpy() @ ours.numpy().T, ref @ ref.T, atol=1e-4)  # sign-invariant


def test_errors(descriptors):
    with pytest.raises(ValueError, match="shrinkage"):
        PCAWhitening(shrinkage=2)
    with pytest.raises(ValueError, match="dim must be in"):
        PCAWhitening(dim=20).fit(descriptors)
    with pytest.raises(ValueError, match="pairs"):
        LearnedWhitening().fit(descriptors, np.array([[0, 400]]))
    with pytest.raises(RuntimeError, match="fit"):
        PCAWhitening().transform(descriptors)

"""Category retrieval metrics against pytorch-metric-learning and scikit-learn."""
import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from metricvision.index.flat import FlatIndex
from metricvision.metrics import cluster_scores, evaluate_retrieval, map_at_r, r_precision, recall_at_k
from metricvision.metrics.evaluate import retrieval_scores


def clustered(n: int, classes: int, dim: int = 16, noise: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, dim))
    y = rng.integers(0, classes, n)
    x = centers[y] + noise * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def pml(q, qy, r=None, ry=None):
    calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"), k="max_bin_count", device=torch.device("cpu"))
    args = (torch.from_numpy(q), torch.from_numpy(qy))
    if r is None:
        return calc.get_accuracy(*args)
    return calc.get_accuracy(*args, torch.from_numpy(r), torch.from_numpy(ry), ref_includes_query=False)


@pytest.mark.parametrize("prefilter", ["none", "bf16", "default"])
def test_leave_one_out_matches_pml(prefilter):
    """FlatIndex search, and the default symmetric self_knn path (index=None)."""
    x, y = clustered(600, 12)
    y[0] = 99  # a lone query: left out of every average, as in PML
    index = None if prefilter == "default" else FlatIndex(16, prefilter=prefilter)
    ours = evaluate_retrieval(x, y, ks=(1, 5), clustering=False, index=index, query_chunk=128)
    ref = pml(x, y)
    assert ours["precision@1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(ref["r_precision"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-6)
    assert ours["num_queries"] == 599


def test_leave_one_out_with_thousands_relevant_matches_pml_in_bounded_memory():
    """Two classes of ~1,500 (R in the thousands, as Fashion-MNIST's 7,000 a class): exact, and the
    neighbour lists stay (chunk, R) (the candidate lists of self_knn grew to 270 MB here, 13 GB there)."""
    import tracemalloc

    x, y = clustered(3000, 2, noise=2.0)
    tracemalloc.start()
    try:
        ours = evaluate_retrieval(x, y, ks=(1,), clustering=False, query_chunk=256)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100e6, f"{peak / 1e6:.0f} MB traced"
    ref = pml(x, y)
    assert ours["map@r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(ref["r_precision"], abs=1e-6)


def test_query_gallery_matches_pml():
    x, y = clustered(500, 10, seed=1)
    q, qy, g, gy = x[:150], y[:150], x[150:], y[150:]
    ours = retrieval_scores(q, qy, g, gy, ks=(1, 10), query_chunk=64)
    ref = pml(q, qy, g, gy)
    assert ours["precision@1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(ref["r_precision"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-6)


def test_hand_worked_ranked_list():
    # R = 2; ranked relevance 0 1 1 -> R-precision 1/2, AP@R = (1/2)(1/2) = 0.25
    hits = np.array([[False, True, True], [True, False, False]])
    r = np.array([2, 1])
    assert r_precision(hits, r) == pytest.approx((0.5 + 1.0) / 2)
    assert map_at_r(hits, r) == pytest.approx((0.25 + 1.0) / 2)
    assert recall_at_k(hits, [1, 2]) == {"recall@1": 0.5, "recall@2": 1.0}
    with pytest.raises(ValueError, match="k must be in"):
        recall_at_k(hits, [4])


def test_cluster_scores_match_sklearn_on_separable_data():
    x, y = clustered(300, 5, noise=0.05)
    out = cluster_scores(x, y, backend="sklearn")
    # well separated clusters: k-means recovers the labels exactly
    assert out["nmi"] == pytest.approx(normalized_mutual_info_score(y, y))
    assert out["ami"] == pytest.approx(adjusted_mutual_info_score(y, y))


def test_cluster_scores_equal_pml_nmi_ami():
    """The faiss backend is AccuracyCalculator's k-means: same clusters, same NMI / AMI."""
    x, y = clustered(2000, 40, noise=1.5)
    ours = cluster_scores(x, y, backend="faiss")
    calc = AccuracyCalculator(include=("NMI", "AMI"), device=torch.device("cpu"))
    ref = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(y))
    assert 0.1 < ours["nmi"] < 0.99  # a case where k-means does not just recover the labels
    assert ours["nmi"] == pytest.approx(ref["NMI"], abs=1e-9)
    assert ours["ami"] == pytest.approx(ref["AMI"], abs=1e-9)
    with pytest.raises(ValueError, match="backend must be one of"):
        cluster_scores(x, y, backend="kmeans++")


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in length"):
        evaluate_retrieval(np.zeros((3, 2), np.float32), np.zeros(4), clustering=False)

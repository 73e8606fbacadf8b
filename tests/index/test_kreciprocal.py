import numpy as np
import pytest
import torch

from metricvision.index.kreciprocal import k_reciprocal_distances, k_reciprocal_search


def reference_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """The authors' re_ranking (Zhong et al., CVPR 2017), loop for loop."""
    original_dist = np.concatenate(
        [np.concatenate([q_q_dist, q_g_dist], axis=1), np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0
    )
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1.0 * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist).astype(np.int32)
    query_num = q_g_dist.shape[0]
    all_num = gallery_num = q_g_dist.shape[0] + q_g_dist.shape[1]
    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, : k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, : k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            cf = initial_rank[candidate, : int(np.around(k1 / 2.0)) + 1]
            cb = initial_rank[cf, : int(np.around(k1 / 2.0)) + 1]
            fi_candidate = np.where(cb == candidate)[0]
            candidate_k_reciprocal_index = cf[fi_candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > 2.0 / 3 * len(candidate_k_reciprocal_index):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index, candidate_k_reciprocal_index)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = 1.0 * weight / np.sum(weight)
    original_dist = original_dist[:query_num,]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    invIndex = [np.where(V[:, i] != 0)[0] for i in range(gallery_num)]
    jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, gallery_num], dtype=np.float32)
        indNonZero = np.where(V[i, :] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + np.minimum(V[i, indNonZero[j]], V[indImages[j], indNonZero[j]])
        jaccard_dist[i] = 1 - temp_min / (2.0 - temp_min)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


def euclid(a, b):
    return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (6, 1, 0.0), (4, 3, 1.0)])
def test_equals_reference(data, k1, k2, lam):
    x, _ = data
    q, g = x[:12].astype(np.float64), x[100:190].astype(np.float64)
    ours = k_reciprocal_distances(euclid(q, g), euclid(q, q), euclid(g, g), k1, k2, lam)
    ref = reference_re_ranking(euclid(q, g), euclid(q, q), euclid(g, g), k1, k2, lam)
    assert ours.shape == (12, 90)
    np.testing.assert_allclose(ours, ref, atol=2e-6)


def test_search_ranks_by_final_distance(data):
    x, _ = data
    q, g = x[:5], x[200:260]
    s, i = k_reciprocal_search(torch.from_numpy(q), g, 70)
    ref = reference_re_ranking(euclid(q, g), euclid(q, q), euclid(g, g))
    np.testing.assert_array_equal(i[:, :60], np.argsort(ref, axis=1, kind="stable"))
    assert (i[:, 60:] == -1).all() and np.isneginf(s[:, 60:]).all()
    np.testing.assert_allclose(-s[:, :60], np.sort(ref, axis=1), atol=1e-5)


def test_errors():
    d = np.ones((2, 3))
    with pytest.raises(ValueError, match="g_g_dist"):
        k_reciprocal_distances(d, np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="lambda_value"):
        k_reciprocal_distances(d, np.ones((2, 2)), np.ones((3, 3)), lambda_value=2)

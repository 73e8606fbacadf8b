"""Similarity matrices and relevance against plain loops."""
import pytest
import torch

from metricvision.similarity import (IGNORED, IRRELEVANT, RELEVANT, crowding, gallery_csls, masks, relevance_from_labels,
                                    similarity)


@pytest.mark.parametrize("kind", ["cosine", "dot", "neg_sq_euclidean"])
def test_similarity_matches_loop(kind):
    g = torch.Generator().manual_seed(0)
    q, r = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(4, 7, generator=g, dtype=torch.float64)
    S = similarity(q, r, kind)
    for i in range(5):
        for j in range(4):
            if kind == "cosine":
                ref = torch.dot(q[i], r[j]) / q[i].norm() / r[j].norm()
            elif kind == "dot":
                ref = torch.dot(q[i], r[j])
            else:
                ref = -((q[i] - r[j]) ** 2).sum()
            assert torch.isclose(S[i, j], ref, rtol=1e-10, atol=1e-10)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="dimension mismatch"):
        similarity(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="unknown similarity kind 'l1'"):
        similarity(torch.zeros(2, 3), torch.zeros(2, 3), "l1")


def test_relevance_self_ids_and_unlabeled():
    y = torch.tensor([0, 0, 1, -1])
    rel = relevance_from_labels(y, y, exclude_self=True)
    assert rel[0, 1] == RELEVANT and rel[0, 2] == IRRELEVANT
    assert (rel.diagonal() == IGNORED).all() and (rel[3] == IGNORED).all() and (rel[:, 3] == IGNORED).all()
    rel = relevance_from_labels(y[:2], y, query_ids=torch.tensor([10, 11]), reference_ids=torch.tensor([10, 11, 12, 13]))
    assert rel[0, 0] == IGNORED and rel[0, 1] == RELEVANT and rel[1, 1] == IGNORED
    pos, neg = masks(rel)
    assert not (pos & neg).any()


def test_gallery_csls_is_twice_the_cosine_less_the_items_mean_cosine_to_its_k_nearest_references():
    torch.manual_seed(0)
    q, g = (torch.nn.functional.normalize(torch.randn(n, 6), dim=1) for n in (3, 5))
    refs = torch.nn.functional.normalize(torch.cat([g[:2].repeat(3, 1) + 0.1 * torch.randn(6, 6), torch.randn(1, 6)]), dim=1)
    got = gallery_csls(q, g, refs, k=3)
    for i in range(3):  # a plain loop over the pairs
        for j in range(5):
            r = sum(sorted((float(g[j] @ x) for x in refs), reverse=True)[:3]) / 3
            assert got[i, j] == pytest.approx(2 * float(q[i] @ g[j]) - r, abs=1e-5)
    assert not torch.allclose(got.argsort(dim=1), (q @ g.T).argsort(dim=1))  # items 0 and 1 are hubs
    with pytest.raises(ValueError, match=r"k must be in \[1, 7\]"):
        crowding(g, refs, 8)

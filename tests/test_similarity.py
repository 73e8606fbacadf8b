"""Similarity matrices and relevance against plain loops."""
import pytest
import torch

from metricvision.similarity import IGNORED, IRRELEVANT, RELEVANT, masks, relevance_from_labels, similarity


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

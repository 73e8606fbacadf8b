"""Miners: pytorch-metric-learning's miners + losses vs ours, and plain loops from the papers."""
import math
import sys
from pathlib import Path

import pytest
import torch
from pytorch_metric_learning import distances, losses as pml, miners as pml_miners

sys.path.insert(0, str(Path(__file__).parent / "losses"))
from loss_helpers import assert_same, batch  # noqa: E402

from metricvision.losses import create_loss  # noqa: E402
from metricvision.miners import MINERS, create_miner  # noqa: E402
from metricvision.similarity import IGNORED, IRRELEVANT, RELEVANT, relevance_from_labels, similarity  # noqa: E402

COS = distances.CosineSimilarity

CASES = [
    ("triplet", dict(margin=0.1), "batch_hard", {}, lambda: pml.TripletMarginLoss(margin=0.1, distance=COS()),
     lambda: pml_miners.BatchHardMiner(distance=COS())),
    ("contrastive", dict(), "batch_hard", {}, lambda: pml.ContrastiveLoss(pos_margin=1.0, neg_margin=0.5, distance=COS()),
     lambda: pml_miners.BatchHardMiner(distance=COS())),
    ("triplet", dict(margin=0.2), "semihard", dict(margin=0.2), lambda: pml.TripletMarginLoss(margin=0.2, distance=COS()),
     lambda: pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard", distance=COS())),
    ("triplet", dict(margin=0.2), "triplet_margin", dict(margin=0.2, kind="hard"),
     lambda: pml.TripletMarginLoss(margin=0.2, distance=COS()),
     lambda: pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="hard", distance=COS())),
    ("multi_similarity", dict(), "multi_similarity", dict(epsilon=0.1), lambda: pml.MultiSimilarityLoss(),
     lambda: pml_miners.MultiSimilarityMiner(epsilon=0.1)),
    ("multi_similarity", dict(), "multi_similarity", dict(epsilon=0.3), lambda: pml.MultiSimilarityLoss(),
     lambda: pml_miners.MultiSimilarityMiner(epsilon=0.3)),
]


@pytest.mark.parametrize("loss_name,loss_kw,miner_name,miner_kw,pml_loss,pml_miner", CASES)
def test_loss_with_miner_matches_pml(loss_name, loss_kw, miner_name, miner_kw, pml_loss, pml_miner):
    x, y = batch(n_classes=6, per_class=4, seed=7)
    ours = create_loss(loss_name, miner=create_miner(miner_name, **miner_kw), **loss_kw)
    ref, mine = pml_loss(), pml_miner()
    assert_same(lambda e: ours(e, y).value, lambda e: ref(e, y, mine(e.detach(), y)), x)


def test_multi_similarity_miner_with_separate_references():
    x, y = batch(seed=1)
    r, ry = batch(n_classes=6, per_class=5, seed=2)
    ours = create_loss("multi_similarity", miner="multi_similarity")
    ref, mine = pml.MultiSimilarityLoss(), pml_miners.MultiSimilarityMiner()
    assert_same(lambda e: ours(e, y, r, ry).value, lambda e: ref(e, y, mine(e.detach(), y, r, ry), r, ry), x)


def test_hardest_row_col_matches_a_loop():
    """HardNet: every row's and every column's most similar negative is kept."""
    x, y = batch(seed=3)
    r, ry = batch(n_classes=6, per_class=3, seed=4)
    S, rel = similarity(x, r), relevance_from_labels(y, ry)
    mined = create_miner("hardest_row_col")(S, rel)
    expected = set()
    for i in range(S.shape[0]):
        negs = [j for j in range(S.shape[1]) if rel[i, j] == 0]
        expected.add((i, max(negs, key=lambda j: S[i, j])))
    for j in range(S.shape[1]):
        negs = [i for i in range(S.shape[0]) if rel[i, j] == 0]
        expected.add((max(negs, key=lambda i: S[i, j]), j))
    assert set(map(tuple, (mined == 0).nonzero().tolist())) == expected
    assert torch.equal(mined == 1, rel == 1)


def test_distance_weighted_probabilities_match_the_paper():
    x, y = batch(n_classes=4, per_class=4, dim=8, seed=5)
    S, rel = similarity(x, x), relevance_from_labels(y, y, exclude_self=True)
    miner = create_miner("distance_weighted", dim=8, cutoff=0.5, nonzero_loss_cutoff=1.4)
    prob = miner.probabilities(S, rel)
    for i in range(len(x)):
        w = {}
        for j in range(len(x)):
            d = max(math.sqrt(max(2 - 2 * float(S[i, j]), 0.0)), 0.5)
            if rel[i, j] == 0 and d < 1.4:
                w[j] = 1.0 / (d ** (8 - 2) * (1 - d * d / 4) ** ((8 - 3) / 2))
        total = sum(w.values())
        expected = torch.tensor([w.get(j, 0.0) / total if total else 0.0 for j in range(len(x))], dtype=S.dtype)
        torch.testing.assert_close(prob[i], expected)
    mined = miner(S, rel)
    assert ((mined == 0) <= (prob > 0)).all()  # only drawable negatives
    assert ((mined == 0).sum(1) <= (rel == 1).sum(1)).all()  # at most one per positive


@pytest.mark.parametrize("name", MINERS.names())
def test_every_miner_returns_a_subset_of_the_relevance(name):
    x, y = batch(seed=8)
    S, rel = similarity(x, x), relevance_from_labels(y, y, exclude_self=True)
    rel[0, 5] = IGNORED
    mined = create_miner(name)(S, rel)
    assert mined.shape == rel.shape and mined.dtype == torch.int8
    kept = mined != IGNORED
    assert torch.equal(mined[kept], rel[kept])
    assert kept.any()


def test_tuple_miner_keeps_each_anchor_with_its_own_positive_and_negative():
    S = torch.rand(9, 9)
    y = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4, 5])  # three (anchor, positive, negative) tuples
    rel = relevance_from_labels(y, y, exclude_self=True)
    mined = create_miner("tuple")(S, rel)
    want = torch.full((9, 9), IGNORED, dtype=torch.int8)
    for t in range(3):
        a, p, n = 3 * t, 3 * t + 1, 3 * t + 2
        want[a, p] = want[p, a] = RELEVANT
        want[a, n] = want[n, a] = IRRELEVANT
    assert torch.equal(mined, want)
    with pytest.raises(ValueError, match="size must be >= 2, got 1"):
        create_miner("tuple", size=1)

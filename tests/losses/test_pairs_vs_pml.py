"""Pair losses against pytorch-metric-learning 2.9.0: same inputs, values and gradients, float64."""
import pytest
import torch
from pytorch_metric_learning import distances, losses as pml

from metricvision.losses import create_loss
from loss_helpers import assert_same, batch

COS = distances.CosineSimilarity

CASES = [
    ("contrastive", dict(pos_margin=1.0, neg_margin=0.5), lambda: pml.ContrastiveLoss(pos_margin=1.0, neg_margin=0.5, distance=COS())),
    ("contrastive", dict(pos_margin=0.8, neg_margin=0.1), lambda: pml.ContrastiveLoss(pos_margin=0.8, neg_margin=0.1, distance=COS())),
    ("triplet", dict(margin=0.1), lambda: pml.TripletMarginLoss(margin=0.1, distance=COS())),
    ("triplet", dict(margin=0.3, smooth=True), lambda: pml.TripletMarginLoss(margin=0.3, smooth_loss=True, distance=COS())),
    ("lifted_structure", dict(neg_margin=1.0, pos_margin=0.0), lambda: pml.LiftedStructureLoss(neg_margin=1.0, pos_margin=0.0, distance=COS())),
    ("lifted_structure", dict(neg_margin=0.3, pos_margin=0.2), lambda: pml.LiftedStructureLoss(neg_margin=0.3, pos_margin=0.2, distance=COS())),
    ("ntxent", dict(temperature=0.07), lambda: pml.NTXentLoss(temperature=0.07)),
    ("ntxent", dict(temperature=0.5), lambda: pml.NTXentLoss(temperature=0.5)),
    ("supcon", dict(temperature=0.1), lambda: pml.SupConLoss(temperature=0.1)),
    ("multi_similarity", dict(alpha=2.0, beta=50.0, base=0.5), lambda: pml.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)),
    ("multi_similarity", dict(alpha=1.0, beta=20.0, base=0.2), lambda: pml.MultiSimilarityLoss(alpha=1, beta=20, base=0.2)),
    ("circle", dict(m=0.4, gamma=80.0), lambda: pml.CircleLoss(m=0.4, gamma=80)),
    ("circle", dict(m=0.25, gamma=32.0), lambda: pml.CircleLoss(m=0.25, gamma=32)),
    ("margin", dict(margin=0.2, beta=1.2), lambda: pml.MarginLoss(margin=0.2, beta=1.2)),
    ("margin", dict(margin=0.1, beta=1.0, nu=0.1, learn_beta=True), lambda: pml.MarginLoss(margin=0.1, beta=1.0, nu=0.1, learn_beta=True)),
]


@pytest.mark.parametrize("name,kwargs,theirs", CASES)
def test_batch_as_references(name, kwargs, theirs):
    x, y = batch()
    ours, ref = create_loss(name, **kwargs), theirs()
    assert_same(lambda e: ours(e, y).value, lambda e: ref(e, y), x)


@pytest.mark.parametrize("name,kwargs,theirs", [c for c in CASES if c[0] != "lifted_structure"])
def test_separate_references(name, kwargs, theirs):
    """Queries != references (a memory, another modality): PML's ref_emb path."""
    x, y = batch(seed=1)
    r, ry = batch(n_classes=6, per_class=5, seed=2)
    ours, ref = create_loss(name, **kwargs), theirs()
    assert_same(lambda e: ours(e, y, r, ry).value, lambda e: ref(e, y, ref_emb=r, ref_labels=ry), x)


def test_npair_matches_pml_on_its_pairs():
    """PML's N-pairs picks one (anchor, positive) per class; ours scores anchors against those positives."""
    x, y = batch(n_classes=8, per_class=2, seed=3)
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

    a, p = lmu.convert_to_pos_pairs_with_unique_labels(None, y)
    ours = create_loss("npair")
    ref = pml.NPairsLoss(distance=distances.DotProductSimilarity(normalize_embeddings=False))
    assert_same(lambda e: ours(e[a], y[a], e[p], y[p]).value, lambda e: ref(e, y), x)


def test_learned_beta_is_an_own_lr_parameter():
    loss = create_loss("margin", learn_beta=True)
    assert [tuple(p.shape) for p in loss.own_lr_parameters()] == [()]
    x, y = batch()
    loss(x.float(), y).value.backward()
    assert loss.beta.grad is not None


def test_ntxent_fixed_temperature_is_exact_in_float64():
    """1 / 0.07 in double precision, not a float32 copy (14.2857142518 instead of 14.2857142857)."""
    x, y = batch(seed=4)
    ours, ref = create_loss("ntxent", temperature=0.07), pml.NTXentLoss(temperature=0.07)
    assert_same(lambda e: ours(e, y).value, lambda e: ref(e, y), x, rtol=1e-13)
    assert ours(x, y).logs["scale"] == 1 / 0.07

import numpy as np
import pytest
import torch

from metricvision.supervision import SUPERVISIONS
from metricvision.supervision.fewshot import (
    CosineClassifier, EpisodeSampler, classify, dense_classification_loss, implant_episode,
    mean_and_interval, prototypes,
)


def test_episode_sampler_shapes_and_classes():
    labels = np.repeat(np.arange(10), 6)
    sampler = EpisodeSampler(labels, n_way=5, k_shot=2, n_query=3, episodes=20, seed=0)
    for s, q in sampler:
        assert s.shape == (10,) and q.shape == (15,)
        sl, ql = labels[s].reshape(5, 2), labels[q].reshape(5, 3)
        assert np.all(sl == sl[:, :1]) and np.all(ql == sl[:, :1])
        assert len(set(sl[:, 0])) == 5 and not set(s) & set(q)


def test_episode_sampler_refuses_too_few_classes():
    with pytest.raises(ValueError, match="5-way episodes need 5 classes"):
        EpisodeSampler(np.repeat(np.arange(4), 10), n_way=5)


def test_prototypical_classifier_matches_loop():
    g = torch.Generator().manual_seed(0)
    support, queries = torch.randn(6, 4, generator=g), torch.randn(5, 4, generator=g)
    protos = prototypes(support, 3, 2)
    logits = classify(queries, protos, "prototypical")
    for i in range(5):
        for c in range(3):
            ref = -((queries[i] - support[2 * c : 2 * c + 2].mean(0)) ** 2).sum()
            assert float(logits[i, c]) == pytest.approx(float(ref), abs=1e-5)
    cos = classify(queries, protos, "cosine", scale=1.0)
    assert torch.all(cos.abs() <= 1 + 1e-6)
    with pytest.raises(ValueError, match="classifier must be one of"):
        classify(queries, protos, "knn")


def test_mean_and_interval():
    out = mean_and_interval(np.array([0.0, 1.0, 0.0, 1.0]))
    assert out["accuracy"] == 0.5
    assert out["ci95"] == pytest.approx(1.96 * np.std([0, 1, 0, 1], ddof=1) / 2)


def test_dense_classification_loss_is_mean_over_locations():
    clf = CosineClassifier(3, 4)
    dense = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 2])
    loss = dense_classification_loss(dense, labels, clf)
    ref = torch.stack([
        torch.nn.functional.cross_entropy(clf(dense[n, :, i, j][None]), labels[n : n + 1])
        for n in range(2) for i in range(2) for j in range(2)
    ]).mean()
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)


def test_implanting_learns_a_cue_the_frozen_embedding_misses():
    # the frozen embedding is pure noise; the class lives in channel c of the maps
    g = torch.Generator().manual_seed(0)
    n_way, k_shot, n_q = 3, 2, 4
    def maps(n_per):
        m = torch.rand(n_way * n_per, 6, 2, 2, generator=g) * 0.1
        for c in range(n_way):
            m[c * n_per : (c + 1) * n_per, c] += 1.0
        return m
    sm, qm = maps(k_shot), maps(n_q)
    sb, qb = torch.randn(n_way * k_shot, 8, generator=g), torch.randn(n_way * n_q, 8, generator=g)
    logits = implant_episode(sm, sb, qm, qb, n_way, k_shot, dim=8, steps=30)
    truth = torch.arange(n_way).repeat_interleave(n_q)
    acc = float((logits.argmax(1) == truth).float().mean())
    base = float((classify(qb, prototypes(sb, n_way, k_shot), "cosine").argmax(1) == truth).float().mean())
    assert acc >= 0.8 and acc > base + 0.3


def test_episodic_supervision_batches_are_episodes():
    sup = SUPERVISIONS.create("episodic", n_way=4, k_shot=1, n_query=2)
    sup.bind(np.repeat(np.arange(6), 5))
    for b in sup.batches(999, 5, torch.Generator().manual_seed(0)):
        assert len(b) == 12 and len({int(sup.labels_[i]) for i in b}) == 4

import math

import pytest

import torch

from metricvision.similarity import IGNORED, IRRELEVANT, RELEVANT
from metricvision.supervision import SUPERVISIONS
from metricvision.supervision.manifold import mine_on_manifold


def _two_arcs(n=60, gap=2.5):
    """Two parallel arcs on the unit sphere; the gap between them is ``gap`` times the spacing."""
    step = math.pi / 2 / n
    t = torch.arange(n) * step
    z = gap * step
    a = torch.stack([torch.cos(t), torch.sin(t), torch.zeros(n)], 1)
    b = torch.stack([torch.cos(t), torch.sin(t), torch.full((n,), z)], 1)
    return torch.cat([a, b]), torch.cat([torch.zeros(n), torch.ones(n)]).long()


def test_positives_follow_the_arc_negatives_cross_it():
    x, arc = _two_arcs()
    anchors = torch.tensor([10, 30, 70, 100])
    pools = mine_on_manifold(x, anchors, k=10, graph_k=4)
    for a, pos, neg in zip(anchors.tolist(), pools.positives, pools.negatives):
        assert len(pos) > 0 and len(neg) > 0
        assert torch.all(arc[pos] == arc[a]), "a hard positive left the anchor's manifold"
        assert torch.all(arc[neg] != arc[a]), "a hard negative lies on the anchor's manifold"
        # positives are farther (Euclidean) than every negative: they are hard
        d = ((x - x[a]) ** 2).sum(1)
        assert d[pos].min() > d[neg].min()


def test_supervision_batches_and_relevance():
    x, arc = _two_arcs()
    # uniform arcs have few modes: random anchors give the four tuples this test looks at
    sup = SUPERVISIONS.create("manifold_mining", num_samples=120, num_anchors=20, k=10, graph_k=4, seed=0, anchor_selection="random")
    logs = sup.refresh(x)
    assert logs["anchors_with_tuples"] > 0
    batch = sup.batches(12, 1)[0]
    assert len(batch) == 12
    rel = sup.relevance(torch.tensor(batch))
    for t in range(4):
        a, p, n = 3 * t, 3 * t + 1, 3 * t + 2
        assert rel[a, p] == RELEVANT and rel[p, a] == RELEVANT
        assert rel[a, n] == IRRELEVANT
        assert arc[batch[a]] == arc[batch[p]] and arc[batch[a]] != arc[batch[n]]
    assert torch.all(rel.diagonal() == IGNORED)
    assert torch.all(sup.lookup(torch.tensor(batch)).labels == -1)
    y = sup.targets(None, torch.tensor(batch), None)
    assert y.tolist() == [0, 0, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7]


def _loop_stationary(x, k, gamma, damping, iters=3000):
    """Plain loops: mutual k-NN affinity, row-normalized walk with a uniform jump, power iteration."""
    x = torch.nn.functional.normalize(x.double(), dim=1).tolist()
    n = len(x)
    sims = [[sum(a * b for a, b in zip(x[i], x[j])) for j in range(n)] for i in range(n)]
    nbrs = [sorted((j for j in range(n) if j != i), key=lambda j: -sims[i][j])[:k] for i in range(n)]
    A = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in nbrs[i]:
            if i in nbrs[j]:
                A[i][j] = max(0.0, sims[i][j]) ** gamma
    pi = [1.0 / n] * n
    for _ in range(iters):
        new = [(1 - damping) / n] * n
        for i in range(n):
            row = sum(A[i])
            for j in range(n):
                new[j] += damping * pi[i] * (A[i][j] / row if row > 0 else 1.0 / n)
        pi = new
    edges = [[j for j in range(n) if A[i][j] > 0] for i in range(n)]
    modes = [i for i in range(n) if edges[i] and all(pi[i] >= pi[j] for j in edges[i])]
    return torch.tensor(pi, dtype=torch.float64), sorted(modes, key=lambda i: -pi[i])


def test_stationary_modes_equal_a_power_iteration_loop():
    from metricvision.supervision.manifold import stationary_modes

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 5, generator=g)
    x = torch.cat([c + 0.3 * torch.randn(10, 5, generator=g) for c in centers])
    anchors, pi = stationary_modes(x, num=30, graph_k=4, gamma=3.0, damping=0.9)
    want_pi, want_modes = _loop_stationary(x, 4, 3.0, 0.9)
    assert torch.allclose(pi, want_pi, rtol=1e-5, atol=0)
    assert anchors.tolist() == want_modes and 0 < len(want_modes) < 30
    assert stationary_modes(x, num=2, graph_k=4)[0].tolist() == stationary_modes(x, num=30, graph_k=4)[0][:2].tolist()


def test_stationary_distribution_is_uniform_on_a_ring():
    from metricvision.supervision.graph import stationary_distribution

    n = 12
    r = torch.arange(n)
    A = torch.sparse_coo_tensor(torch.stack([torch.cat([r, r]), torch.cat([(r + 1) % n, (r - 1) % n])]), torch.ones(2 * n), (n, n), check_invariants=False)
    assert torch.allclose(stationary_distribution(A), torch.full((n,), 1 / n, dtype=torch.float64))
    with pytest.raises(ValueError, match="damping must be in \\(0, 1\\], got 0"):
        stationary_distribution(A, damping=0)


def test_mining_uses_stationary_anchors_or_random_ones():
    x, _ = _two_arcs()
    from metricvision.supervision.manifold import stationary_modes

    sup = SUPERVISIONS.create("manifold_mining", num_samples=120, num_anchors=20, k=10, graph_k=4)
    sup.refresh(x)
    assert sup.pools_.anchors.tolist() == stationary_modes(x, 20, 4)[0].tolist()
    rnd = SUPERVISIONS.create("manifold_mining", num_samples=120, num_anchors=20, graph_k=4, anchor_selection="random")
    rnd.refresh(x)
    assert len(rnd.pools_.anchors) == 20
    with pytest.raises(ValueError, match="anchor_selection must be one of"):
        SUPERVISIONS.create("manifold_mining", anchor_selection="modes")


def test_batches_fill_the_epoch_by_cycling_through_the_anchors():
    x, arc = _two_arcs()
    sup = SUPERVISIONS.create("manifold_mining", num_samples=120, num_anchors=5, k=10, graph_k=4, seed=0, anchor_selection="random")
    sup.refresh(x)
    usable = [a for a, p, n in zip(sup.pools_.anchors.tolist(), sup.pools_.positives, sup.pools_.negatives) if len(p) and len(n)]
    assert 0 < len(usable) <= 5
    out = sup.batches(12, 2 * len(usable), torch.Generator().manual_seed(1))
    assert len(out) == 2 * len(usable) and all(len(b) == 12 for b in out)  # 4 tuples a batch: each anchor 8 times
    anchors = [b[i] for b in out for i in range(0, 12, 3)]
    for s in range(0, len(anchors), len(usable)):  # every anchor once before any repeats
        assert sorted(anchors[s : s + len(usable)]) == sorted(usable)
    for b in out:
        for t in range(0, 12, 3):
            a, p, n = b[t : t + 3]
            i = sup.pools_.anchors.tolist().index(a)
            assert p in sup.pools_.positives[i].tolist() and n in sup.pools_.negatives[i].tolist()


def test_all_anchors():
    x, _ = _two_arcs()
    sup = SUPERVISIONS.create("manifold_mining", num_samples=120, num_anchors=20, k=10, graph_k=4, anchor_selection="all")
    assert sup.refresh(x)["anchors"] == 120
    assert sup.pools_.anchors.tolist() == list(range(120))

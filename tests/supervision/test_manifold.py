import math

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
    sup = SUPERVISIONS.create("manifold_mining", num_samples=120, num_anchors=20, k=10, graph_k=4, seed=0)
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

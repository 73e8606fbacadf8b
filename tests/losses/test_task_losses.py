"""The task losses (HardNet, BNNeck ID + triplet, tuple contrastive) against plain loops following the papers."""
import math

import pytest
import torch
import torch.nn.functional as F

from metricvision.losses import create_loss
from metricvision.losses.hardnet import anchors_and_positives


def unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=1)


def hardnet_loop(a, p, margin=1.0):
    """Mishchuk et al. 2017, eq. (1)-(2): per pair, the closest non-matching descriptor of the anchor or the positive."""
    n, total = len(a), 0.0
    for i in range(n):
        d_pos = (a[i] - p[i]).norm()
        negs = [(a[i] - p[j]).norm() for j in range(n) if j != i] + [(a[j] - p[i]).norm() for j in range(n) if j != i]
        total += max(0.0, margin + d_pos - min(negs))
    return total / n


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hardnet_equals_the_paper_loop(dtype):
    a, p = unit(10, 8, 0), unit(10, 8, 1)
    batch = torch.stack([a, p], dim=1).reshape(20, 8).to(dtype)  # PK order: a0 p0 a1 p1 ...
    labels = torch.arange(10).repeat_interleave(2)
    out = create_loss("hardnet")(batch, labels)
    assert math.isclose(out.value.item(), hardnet_loop(a, p), rel_tol=1e-5)
    swapped = torch.stack([p, a], dim=1).reshape(20, 8).to(dtype)  # every pair's roles swapped: the transpose
    assert math.isclose(create_loss("hardnet")(swapped, labels).value.item(), out.value.item(), rel_tol=1e-5)


def test_anchors_and_positives_pairs_each_label_once():
    a, p = anchors_and_positives(torch.tensor([3, 1, 3, -1, 1, 3, 2]))
    assert a.tolist() == [0, 1] and p.tolist() == [2, 4]


def bot_loop(f_t, f_i, weights, labels, margin=0.3, eps=0.1):
    """Luo et al. 2019: batch-hard triplet on f_t + cross-entropy with smoothed targets on f_i W^T."""
    n, c = len(labels), weights.shape[0]
    trip = []
    for i in range(n):
        dp = [(f_t[i] - f_t[j]).norm() for j in range(n) if j != i and labels[j] == labels[i]]
        dn = [(f_t[i] - f_t[j]).norm() for j in range(n) if labels[j] != labels[i]]
        trip.append(max(0.0, max(dp) - min(dn) + margin))
    ce = []
    for i in range(n):
        logp = torch.log_softmax(f_i[i] @ weights.T, dim=0)
        q = torch.full((c,), eps / c, dtype=logp.dtype)
        q[labels[i]] += 1 - eps
        ce.append(-(q * logp).sum())
    return sum(trip) / n + float(sum(ce)) / n


def test_bnneck_id_triplet_equals_the_paper_loop():
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(3)
    f_t, f_i = torch.randn(12, 6, dtype=torch.float64), torch.randn(12, 6, dtype=torch.float64)
    loss = create_loss("bnneck_id_triplet", num_classes=4, embedding_dim=6).double()
    out = loss(torch.cat([f_t, f_i], dim=1), labels)
    assert math.isclose(out.value.item(), bot_loop(f_t, f_i, loss.proxies.detach(), labels), rel_tol=1e-6)
    same = loss(f_t, labels)  # no neck: both terms read the same feature
    assert math.isclose(same.value.item(), bot_loop(f_t, f_t, loss.proxies.detach(), labels), rel_tol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, 6\) or \(B, 12\)"):
        loss(torch.randn(12, 5, dtype=torch.float64), labels)


def tuple_loop(x, labels, margin, negatives):
    """Radenovic et al. 2018, eq. (2) over (q, p, n_1..n_k) tuples, negatives the k most similar in the batch."""
    per = []
    for q in range(len(x)):
        positives = [j for j in range(len(x)) if j != q and labels[j] == labels[q]]
        if not positives:
            continue
        cand = sorted((j for j in range(len(x)) if labels[j] != labels[q]), key=lambda j: -float(x[q] @ x[j]))[:negatives]
        cost = sum(0.5 * float((x[q] - x[j]).norm()) ** 2 for j in positives)
        cost += sum(0.5 * max(0.0, margin - float((x[q] - x[j]).norm())) ** 2 for j in cand)
        per.append(cost)
    return sum(per) / len(per)


def test_tuple_contrastive_equals_the_paper_loop():
    x = unit(12, 4, 2)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7])  # four singletons: negatives only
    out = create_loss("tuple_contrastive", margin=1.2, negatives=3)(x, labels)
    assert math.isclose(out.value.item(), tuple_loop(x, labels, 1.2, 3), rel_tol=1e-6)
    assert out.logs["tuples"] == 8

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metricvision.supervision.incremental import ExemplarMemory, class_incremental_tasks, herding, icarl_loss
from metricvision.supervision.longtail import fit_threshold, long_tail_subset, pareto_counts, reject_below


def test_herding_first_pick_is_closest_to_mean_and_matches_loop():
    x = F.normalize(torch.randn(30, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    order = herding(x, 6)
    mu = x.mean(0)
    assert int(order[0]) == int(((x - mu) ** 2).sum(1).argmin())
    chosen, s = [], torch.zeros(5)
    for t in range(1, 7):
        d = [float(((mu - (s + x[i]) / t) ** 2).sum()) if i not in chosen else np.inf for i in range(30)]
        chosen.append(int(np.argmin(d)))
        s += x[chosen[-1]]
    assert order.tolist() == chosen
    assert len(set(order.tolist())) == 6


def test_herding_mean_converges_faster_than_random():
    x = F.normalize(torch.randn(200, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    mu = x.mean(0)
    h = x[herding(x, 10)].mean(0)
    rand = x[torch.randperm(200, generator=torch.Generator().manual_seed(2))[:10]].mean(0)
    assert (h - mu).norm() < (rand - mu).norm() / 3


def test_exemplar_memory_respects_budget_and_keeps_herding_prefix():
    mem = ExemplarMemory(budget=12)
    g = torch.Generator().manual_seed(3)
    f1, y1 = torch.randn(40, 4, generator=g), torch.arange(2).repeat_interleave(20)
    mem.update(f1, y1, torch.arange(40))
    assert len(mem) == 12 and len(mem.exemplars_[0]) == 6
    first = mem.exemplars_[0].clone()
    mem.update(torch.randn(20, 4, generator=g), torch.full((20,), 2), torch.arange(40, 60))
    assert len(mem) == 12 and all(len(v) == 4 for v in mem.exemplars_.values())
    assert torch.equal(mem.exemplars_[0], first[:4])
    assert torch.all(mem.exemplars_[2] >= 40)


def test_icarl_loss_matches_loop_and_distills_old_outputs():
    g = torch.Generator().manual_seed(4)
    logits, old = torch.randn(3, 5, generator=g), torch.randn(3, 2, generator=g)
    labels = torch.tensor([2, 4, 3])
    ref = 0.0
    for i in range(3):
        for c in range(5):
            target = float(torch.sigmoid(old[i, c])) if c < 2 else float(c == labels[i])
            p = float(torch.sigmoid(logits[i, c]))
            ref -= target * np.log(p) + (1 - target) * np.log(1 - p)
    assert float(icarl_loss(logits, labels, old)) == pytest.approx(ref / 3, rel=1e-5)
    # without a previous model it is plain one-hot BCE, and it is minimal where the old outputs are kept
    assert float(icarl_loss(logits, labels)) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(logits, F.one_hot(labels, 5).float(), reduction="sum") / 3))
    kept = torch.cat([old, logits[:, 2:]], 1).requires_grad_()
    icarl_loss(kept, labels, old).backward()
    assert torch.allclose(kept.grad[:, :2], torch.zeros(3, 2), atol=1e-6)


def test_class_incremental_tasks():
    tasks = class_incremental_tasks(range(10), 5, seed=0)
    assert len(tasks) == 5 and sorted(np.concatenate(tasks).tolist()) == list(range(10))
    assert [len(t) for t in tasks] == [2] * 5 and np.concatenate(tasks).tolist() != list(range(10))
    with pytest.raises(ValueError, match="num_tasks"):
        class_incremental_tasks(range(3), 4)


def test_pareto_counts_and_subset():
    c = pareto_counts(50, 100, 2)
    assert c[0] == 100 and c[-1] == 2 and np.all(np.diff(c) <= 0)
    labels = np.repeat(np.arange(20), 30)
    idx = long_tail_subset(labels, max_count=30, min_count=2, seed=0)
    counts = np.sort(np.bincount(labels[idx], minlength=20))[::-1]
    assert counts[0] == 30 and counts[-1] == 2
    # "size" gives the largest counts to the largest classes
    unequal = np.repeat(np.arange(6), [3, 50, 8, 40, 20, 5])
    got = np.bincount(unequal[long_tail_subset(unequal, max_count=40, min_count=2, order="size")], minlength=6)
    assert got[1] == 40 and np.argsort(-got, kind="stable").tolist()[:3] == [1, 3, 4]
    with pytest.raises(ValueError, match="order must be one of"):
        long_tail_subset(labels, 30, order="tail")


def test_reject_below_and_fit_threshold_against_a_loop():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.7], [0.4, 0.3], [0.35, 0.1], [0.6, 0.2], [0.1, 0.65]])
    classes = np.array([10, 20])
    labels = np.array([10, 20, -1, -1, 20, -1])
    assert reject_below(scores, classes, 0.5).tolist() == [10, 20, -1, -1, 10, 20]

    def balanced(t):
        pred = reject_below(scores, classes, t)
        known = labels >= 0
        return ((pred == labels) & known).sum() / known.sum() + ((pred == -1) & ~known).sum() / (~known).sum()

    t = fit_threshold(scores, classes, labels)
    assert balanced(t) == pytest.approx(max(balanced(float(c)) for c in scores.max(1).values))
    assert t == pytest.approx(0.7)  # keeps 0.9 and 0.7 (right), rejects the three unknowns and the wrong 0.6
    with pytest.raises(ValueError, match="both known"):
        fit_threshold(scores[:2], classes, labels[:2])

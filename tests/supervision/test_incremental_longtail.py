import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from metricvision.supervision.incremental import (
    ExemplarMemory, class_incremental_tasks, class_means, herding, incremental_scores, nearest_mean_of_exemplars,
)
from metricvision.supervision.longtail import long_tail_subset, open_set_scores, pareto_counts, shot_accuracy


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


def test_nearest_mean_of_exemplars():
    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    means, classes = class_means(feats, torch.tensor([3, 3, 7, 7]))
    pred = nearest_mean_of_exemplars(torch.tensor([[1.0, 0.2], [0.2, 1.0]]), means, classes)
    assert pred.tolist() == [3, 7]


def test_tasks_and_incremental_scores():
    tasks = class_incremental_tasks(range(10), 5, seed=0)
    assert len(tasks) == 5 and sorted(np.concatenate(tasks).tolist()) == list(range(10))
    acc = np.array([[1.0, 0, 0], [0.5, 0.9, 0], [0.2, 0.6, 0.8]])
    out = incremental_scores(acc)
    assert out["average_incremental_accuracy"] == pytest.approx(np.mean([1.0, 0.7, (0.2 + 0.6 + 0.8) / 3]))
    assert out["forgetting"] == pytest.approx(((1.0 - 0.2) + (0.9 - 0.6)) / 2)
    with pytest.raises(ValueError, match="num_tasks"):
        class_incremental_tasks(range(3), 4)


def test_pareto_counts_and_subset():
    c = pareto_counts(50, 100, 2)
    assert c[0] == 100 and c[-1] == 2 and np.all(np.diff(c) <= 0)
    labels = np.repeat(np.arange(20), 30)
    idx = long_tail_subset(labels, max_count=30, min_count=2, seed=0)
    counts = np.sort(np.bincount(labels[idx], minlength=20))[::-1]
    assert counts[0] == 30 and counts[-1] == 2


def test_shot_accuracy_groups():
    labels = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 0, 0, 0])
    out = shot_accuracy(pred, labels, {0: 200, 1: 50, 2: 5})
    assert out["many_accuracy"] == 1.0 and out["medium_accuracy"] == 0.5 and out["few_accuracy"] == 0.0
    assert out["accuracy"] == pytest.approx(0.5)


def test_open_set_scores_against_sklearn_and_loop():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2, 0, -1, -1, -1, 1])
    scores = rng.random(8)
    pred = np.array([0, 1, 0, 0, 1, 2, 0, 1])
    out = open_set_scores(scores, pred, labels, threshold=0.5)
    assert out["auroc"] == pytest.approx(roc_auc_score(labels >= 0, scores))
    tp = fp = fn = 0
    for s, p, y in zip(scores, pred, labels):
        ok = y >= 0 and p == y
        if s >= 0.5:
            tp, fp = tp + ok, fp + (not ok)
        if y >= 0 and not (s >= 0.5 and ok):
            fn += 1
    assert out["f_measure"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    # a perfect separation gives AUROC 1 and the best threshold rejects every unknown
    perfect = open_set_scores(np.where(labels >= 0, 0.9, 0.1), labels.clip(0), labels)
    assert perfect["auroc"] == 1.0 and perfect["f_measure"] == 1.0

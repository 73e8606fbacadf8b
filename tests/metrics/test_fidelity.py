"""Hand-worked regressions of issue 11 (fidelity): each case differed from its reference before."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from metricvision.metrics import (cluster_scores, evaluate_retrieval, few_shot_accuracy, fpr_at_recall, kfold_accuracy, open_set_scores,
                                  reid_scores, revisited_scores, tar_at_far)


@pytest.mark.parametrize("labels", [np.zeros(6, int), np.arange(6)], ids=["one class", "singletons"])
def test_cluster_scores_of_a_degenerate_labelling_is_one(labels):
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    out = cluster_scores(x, labels)
    assert out == {"nmi": 1.0, "ami": 1.0}
    assert (normalized_mutual_info_score(labels, labels), adjusted_mutual_info_score(labels, labels)) == (1.0, 1.0)


def gnd_one_positive_at(position: int, **lists):
    """A db of 8 items ranked 0..7 for a single query (db item i at position i)."""
    db = torch.eye(8) * torch.arange(8, 0, -1)[:, None]
    q = torch.ones(1, 8)
    return q, db, [{"easy": [], "hard": [], "junk": [], **lists}]


@pytest.mark.filterwarnings("ignore:revisited hard")
def test_revisited_repeated_index_counts_once_as_revisitop():
    # easy = [3, 3]: revisitop's np.in1d finds one positive at 3, recall step 1 / len(list) = 1/2:
    # AP = (0/3 + 1/4) / 2 / 2 = 0.0625 (a double count gave 0.27)
    q, db, gnd = gnd_one_positive_at(3, easy=[3, 3])
    assert revisited_scores(q, db, gnd)["easy_map"] == pytest.approx(0.0625)
    # 2 both easy and hard, junk 0 twice: medium has one positive at 2 - 1 junk = 1 and step
    # 1/2: (0/1 + 1/2) / 2 / 2; in easy 2 is also junk, which is never ranked before itself
    q, db, gnd = gnd_one_positive_at(3, easy=[2], hard=[2], junk=[0, 0])
    out = revisited_scores(q, db, gnd)
    assert out["medium_map"] == pytest.approx(0.125)
    assert out["easy_map"] == out["hard_map"] == pytest.approx((0 / 1 + 1 / 2) / 2)


def test_revisited_protocol_without_positives_is_nan_and_the_others_are_computed():
    q, db, gnd = gnd_one_positive_at(0, easy=[0])
    with pytest.warns(UserWarning, match="revisited hard: no query has a positive"):
        out = revisited_scores(q, db, gnd)
    assert out["easy_map"] == 1.0 and out["medium_mp@1"] == 1.0
    assert all(math.isnan(out[f"hard_{m}"]) for m in ("map", "mp@1", "mp@5", "mp@10"))
    with pytest.raises(ValueError, match="no query has an easy or hard image"):
        revisited_scores(q, db, [{"easy": [], "hard": [], "junk": [1]}])


def test_tar_at_far_counts_impostors_exactly():
    # 100 impostors 0.00 .. 0.99; far = 0.29 allows 29 (roc_curve's fpr 29/100 <= 0.29), not
    # floor(0.29 * 100) = 28: the genuine pair at 0.705 is then accepted
    sims = np.r_[0.705, np.arange(100) / 100]
    same = np.r_[True, np.zeros(100, bool)]
    assert 0.29 * 100 < 29 and tar_at_far(sims, same, 0.29) == 1.0
    assert tar_at_far(sims, same, 0.28) == 0.0
    with pytest.raises(ValueError, match="far must be in"):
        tar_at_far(sims, same, 1.5)


def test_few_shot_accuracy_is_exact_in_float64():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 6)
    x = torch.as_tensor(rng.standard_normal((36, 4)), dtype=torch.float32) + torch.as_tensor(labels[:, None] % 2, dtype=torch.float32)
    out = few_shot_accuracy(x, labels, n_way=3, k_shot=1, n_query=5, episodes=40)
    # a plain loop over the same episodes (same draws) counting right answers
    members = {c: np.flatnonzero(labels == c) for c in range(6)}
    draws, right = np.random.default_rng(0), 0
    for _ in range(40):
        picked = [draws.permutation(members[c])[:6] for c in draws.choice(np.arange(6), 3, replace=False)]
        protos = torch.stack([x[p[:1]].mean(0) for p in picked])
        for w, p in enumerate(picked):
            right += int((torch.cdist(x[p[1:]], protos).argmin(1) == w).sum())
    assert right % 15 != 0 and out["accuracy"] == right / 15 / 40  # exact: no float32 episode means


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("as_torch", [False, True])
def test_instance_scorers_accept_float32_and_float64(dtype, as_torch):
    rng = np.random.default_rng(1)
    q, g = rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal((10, 4)).astype(dtype)
    q, g = (torch.from_numpy(q), torch.from_numpy(g)) if as_torch else (q, g)
    gnd = [{"easy": [0, 1], "hard": [2], "junk": [3]}] * 3
    assert 0 < revisited_scores(q, g, gnd)["medium_map"] <= 1
    ids, cams = np.arange(10) % 3, np.arange(10) % 2
    assert 0 < reid_scores(q, np.arange(3), np.ones(3, int) * 5, g, ids, cams)["map"] <= 1
    sims, same = (q[:, :1] * 1).reshape(-1), np.array([True, False, True])
    assert 0 <= fpr_at_recall(sims, same) <= 1 and 0 <= tar_at_far(sims, same, 0.5) <= 1


@pytest.mark.parametrize("convert", [np.float32, np.float64, torch.float32, torch.float64], ids=str)
def test_class_and_pair_scorers_accept_float32_and_float64(convert):
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((40, 4)), np.repeat(np.arange(4), 10)
    as_input = (lambda a: a.astype(convert)) if isinstance(convert, type) else (lambda a: torch.from_numpy(a).to(convert))
    assert 0 <= few_shot_accuracy(as_input(x), y, 2, 1, 3, episodes=5)["accuracy"] <= 1
    assert 0 <= open_set_scores(as_input(x), np.arange(4), np.r_[y[:-5], -np.ones(5, int)])["f_measure"] <= 1
    assert 0 <= kfold_accuracy(as_input(x[:, 0]), y % 2 == 0, y)["accuracy"] <= 1
    assert 0 <= evaluate_retrieval(as_input(x), y)["map@r"] <= 1


def test_instance_scorers_refuse_nan_and_inf():
    rng = np.random.default_rng(2)
    q, g = torch.randn(3, 4), torch.randn(10, 4)
    q[1, 2], g[4, 0] = float("nan"), float("inf")
    gnd = [{"easy": [0], "hard": [], "junk": []}] * 3
    with pytest.raises(ValueError, match="queries must be finite: 1 rows hold NaN or inf, the first is row 1"):
        revisited_scores(q, g, gnd)
    with pytest.raises(ValueError, match="gallery must be finite: 1 rows .* row 4"):
        reid_scores(q.nan_to_num(), np.arange(3), np.zeros(3, int), g, np.arange(10) % 3, np.ones(10, int))
    sims = rng.random(20)
    sims[[5, 7]] = np.nan
    with pytest.raises(ValueError, match="sims must be finite: 2 rows .* row 5"):
        fpr_at_recall(sims, np.arange(20) % 2 == 0)
    with pytest.raises(ValueError, match="sims must be finite"):
        tar_at_far(sims, np.arange(20) % 2 == 0)

"""Verification, patches, few-shot, long-tail, open-set, incremental and category protocols
against plain reference loops (facenet-style threshold search, HardNet FPR95, OLTR code)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from metricvision.data.sample import Sample
from metricvision.metrics import (PROTOCOLS, few_shot_accuracy, fpr_at_recall, incremental_scores, kfold_accuracy,
                                  open_set_f_measure, open_set_scores, shot_accuracy, tar_at_far)
from metric_references import ref_f_measure, ref_fpr95


def ref_kfold(sims, same, folds):
    accs = []
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        best_t, best_acc = None, -1.0
        for t in sorted(set(sims[tr].tolist()) | {np.inf}):
            acc = ((sims[tr] >= t) == same[tr]).mean()
            if acc > best_acc:
                best_t, best_acc = t, acc
        accs.append(((sims[te] >= best_t) == same[te]).mean())
    return np.mean(accs)


def test_kfold_accuracy_matches_loop_with_ties():
    rng = np.random.default_rng(0)
    same = np.repeat([True, False], 100)
    sims = np.round(np.where(same, 0.5, 0.0) + rng.standard_normal(200) * 0.4, 1)  # many ties
    folds = np.tile(np.arange(10), 20)
    assert kfold_accuracy(sims, same, folds)["accuracy"] == pytest.approx(ref_kfold(sims, same, folds))


def test_tar_at_far_hand_worked():
    neg = np.linspace(0, 1, 2000)  # FAR 1e-3 allows 2 impostors above the threshold = 3rd highest impostor
    pos = np.array([0.99, 0.9995, 1.5, 2.0])
    sims, same = np.concatenate([pos, neg]), np.concatenate([np.ones(4, bool), np.zeros(2000, bool)])
    t = np.sort(neg)[::-1][2]
    assert tar_at_far(sims, same, 1e-3) == (pos > t).mean() == 0.75


def test_fpr95_matches_hardnet():
    rng = np.random.default_rng(2)
    labels = rng.random(500) < 0.5
    scores = np.exp(labels * 1.0 + rng.standard_normal(500))  # positive scores as HardNet assumes
    assert fpr_at_recall(scores, labels) == pytest.approx(ref_fpr95(labels.astype(int), scores))
    with pytest.raises(ValueError, match="both matching and non-matching"):
        fpr_at_recall(scores, np.ones(500, bool))


def vec_embed(samples):
    return F.normalize(torch.tensor(np.stack([s.meta["vec"] for s in samples]), dtype=torch.float32), dim=1)


def test_lfw_protocol():
    rng = np.random.default_rng(3)
    ids = F.normalize(torch.randn(40, 16), dim=1).numpy()
    left, right = [], []
    for n in range(200):
        same, fold = n % 2 == 0, n // 20
        a, b = n % 40, n % 40 if same else (n + 7) % 40
        for side, i, name in ((left, a, "l"), (right, b, "r")):
            side.append(Sample(f"{name}{i}_{n}.jpg", label=i, meta={"vec": ids[i] + 0.3 * rng.standard_normal(16), "same": same, "fold": fold}))
    out = PROTOCOLS.get("lfw")(vec_embed, {"left": left, "right": right})
    sims = (vec_embed(left) * vec_embed(right)).sum(1).numpy()
    same = np.array([s.meta["same"] for s in left])
    assert out["accuracy"] == pytest.approx(ref_kfold(sims, same, np.arange(200) // 20))
    assert out["tar@far=0.001"] == tar_at_far(sims, same)


def test_hpatches_protocol_crops_patches(tmp_path):
    column = np.zeros((65 * 3, 65, 3), np.uint8)
    for j, v in enumerate((30, 130, 230)):
        column[65 * j : 65 * (j + 1)] = v
    samples = [Sample(column, label=j, bbox=(0, 65 * j, 65, 65 * (j + 1)), meta={"image": name, "sequence": "v_x"})
               for name in ("ref", "e1", "h1", "t1") for j in range(3)]

    def embed(ss):
        m = torch.tensor([float(np.asarray(s.image).mean()) for s in ss])
        return F.normalize(torch.stack([torch.cos(m / 80), torch.sin(m / 80)], 1), dim=1)

    out = PROTOCOLS.get("hpatches")(embed, {"test": samples})
    assert out["fpr95"] == 0.0 and out["fpr95_tough"] == 0.0


def test_brown_protocol():
    same = np.array([True, False] * 50)
    rng = np.random.default_rng(4)
    left = [Sample(np.zeros((4, 4, 3), np.uint8) + i % 250, meta={"vec": np.array([1.0, 0.0]), "same": s}) for i, s in enumerate(same)]
    right = [Sample(np.zeros((4, 4, 3), np.uint8) + i % 250, meta={"vec": np.array([1.0, 0.1 + (0 if s else 2) + rng.random()]), "same": s})
             for i, s in enumerate(same)]
    assert PROTOCOLS.get("brown")(vec_embed, {"left": left, "right": right}) == {"fpr95": 0.0}


def test_few_shot_separable_and_chance():
    labels = np.repeat(np.arange(10), 20)
    sep = F.one_hot(torch.as_tensor(labels), 10).float()
    out = few_shot_accuracy(sep, labels, n_way=5, k_shot=1, n_query=5, episodes=50)
    assert out["accuracy"] == 1.0 and out["ci95"] == 0.0
    noise = few_shot_accuracy(torch.randn(200, 32), labels, n_way=5, k_shot=1, n_query=5, episodes=400)
    assert abs(noise["accuracy"] - 0.2) < 4 * noise["ci95"]
    with pytest.raises(ValueError, match="needs 5 classes"):
        few_shot_accuracy(sep, labels, n_way=5, k_shot=10, n_query=15)


def ref_shot_acc(preds, labels, training_labels, many_shot_thr=100, low_shot_thr=20):
    """OLTR utils.py shot_acc with the inclusive bounds of the issue (>= many, <= few)."""
    many, median, low = [], [], []
    for l in np.unique(labels):
        n_train = len(training_labels[training_labels == l])
        acc = (preds[labels == l] == labels[labels == l]).sum() / len(labels[labels == l])
        (many if n_train >= many_shot_thr else low if n_train <= low_shot_thr else median).append(acc)
    return np.mean(many), np.mean(median), np.mean(low)


def test_shot_accuracy_matches_oltr():
    rng = np.random.default_rng(5)
    train = np.repeat(np.arange(6), [150, 100, 99, 21, 20, 3])
    labels = rng.integers(0, 6, 300)
    preds = np.where(rng.random(300) < 0.7, labels, rng.integers(0, 6, 300))
    out = shot_accuracy(preds, labels, train)
    assert (out["many_shot"], out["medium_shot"], out["few_shot"]) == pytest.approx(ref_shot_acc(preds, labels, train))
    few = np.isin(labels, [4, 5]) & (preds != labels)  # classes 4 and 5 have <= 20 training samples
    group = np.select([np.isin(preds, [0, 1]), np.isin(preds, [2, 3])], ["many", "medium"], "few")
    for g in ("many", "medium", "few"):
        assert out[f"few_errors_to_{g}"] == pytest.approx((group[few] == g).mean())
    assert np.isnan(shot_accuracy(labels, labels, train)["few_errors_to_many"])  # no errors, no shares


def test_open_set_f_measure_and_protocol():
    rng = np.random.default_rng(6)
    labels = rng.integers(-1, 4, 200)
    preds = np.where(rng.random(200) < 0.6, labels, rng.integers(-1, 4, 200))
    assert open_set_f_measure(preds, labels) == pytest.approx(ref_f_measure(preds, labels))
    centers = np.eye(4, 8)
    train = [Sample("t", label=c, meta={"vec": centers[c] + 0.05 * rng.standard_normal(8)}) for c in range(4) for _ in range(5)]
    test = [Sample("k", label=c, meta={"vec": centers[c] + 0.05 * rng.standard_normal(8)}) for c in range(4)]
    open_ = [Sample("u", meta={"vec": np.ones(8) + 0.05 * rng.standard_normal(8)}) for _ in range(4)]
    out = PROTOCOLS.get("openset")(vec_embed, {"train": train, "test": test, "open": open_}, threshold=0.5)
    assert out["f_measure"] == pytest.approx(1.0) and out["auroc"] == 1.0 and out["closed_accuracy"] == 1.0
    conf_known, conf_unknown = np.array([0.9, 0.4]), np.array([0.5, 0.1])
    assert roc_auc_score([1, 1, 0, 0], np.r_[conf_known, conf_unknown]) == 0.75


def test_open_set_auroc_of_softmax_confidence_and_of_the_max_score():
    # two known classes that resemble each other (similarities 0.9 / 0.8 to both means) and an unknown
    # class close to only one of them (0.6 / 0.1): the softmax is surer of the unknown items, the raw
    # similarity is not; both AUROCs are checked against scikit-learn on the scores themselves
    scores = np.array([[0.9, 0.8], [0.8, 0.9], [0.85, 0.8], [0.6, 0.1], [0.1, 0.55]])
    labels = np.array([0, 1, 0, -1, -1])
    out = open_set_scores(scores, np.array([0, 1]), labels, threshold=0.0, temperature=0.1)
    softmax_conf = torch.softmax(torch.tensor(scores) / 0.1, 1).max(1).values.numpy()
    assert out["auroc"] == pytest.approx(roc_auc_score(labels >= 0, softmax_conf)) == 0.0
    assert out["auroc_max_score"] == pytest.approx(roc_auc_score(labels >= 0, scores.max(1))) == 1.0


def test_open_set_f_measure_counts_a_rejected_known_sample():
    # 3 known right, 1 known rejected, 1 unknown accepted: P = 3/4, R = 3/4 (pre-2020 OLTR: P = 1)
    labels, preds = np.array([0, 1, 2, 3, -1]), np.array([0, 1, 2, -1, 1])
    assert open_set_f_measure(preds, labels) == pytest.approx(0.75)
    assert open_set_f_measure(np.full(4, -1), np.array([0, 1, 2, -1])) == 0.0


def test_incremental_scores_hand_worked():
    acc = np.array([[0.9, np.nan, np.nan], [0.7, 0.8, np.nan], [0.6, 0.5, 0.9]])
    out = incremental_scores(acc, [0.9, 0.75, 0.66])
    assert out["average_incremental_accuracy"] == pytest.approx((0.9 + 0.75 + 0.66) / 3)
    assert out["forgetting"] == pytest.approx(((0.9 - 0.6) + (0.8 - 0.5)) / 2)


def test_incremental_protocol_with_one_model_per_step():
    centers = np.eye(4, 6)
    train = [Sample("t", label=c, meta={"vec": centers[c]}) for c in range(4) for _ in range(3)]
    test = [Sample("q", label=c, meta={"vec": centers[c]}) for c in range(4)]
    forgetful = lambda ss: F.normalize(torch.tensor(np.stack([s.meta["vec"] if s.label >= 2 else np.ones(6) for s in ss]), dtype=torch.float32), dim=1)  # noqa: E731
    out = PROTOCOLS.get("incremental")([vec_embed, forgetful], {"train": train, "test": test})
    assert out["forgetting"] == pytest.approx(0.5) and out["final_accuracy"] == 0.75
    with pytest.raises(ValueError, match="num_tasks"):
        PROTOCOLS.get("incremental")([vec_embed, vec_embed], {"train": train, "test": test}, num_tasks=1)


def test_category_protocols_and_missing_split():
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((5, 8))
    make = lambda split: [Sample("x", label=c, split=split, meta={"vec": centers[c] + 0.1 * rng.standard_normal(8)}) for c in range(5) for _ in range(4)]  # noqa: E731
    out = PROTOCOLS.get("cub")(vec_embed, {"train": [], "test": make("test")})
    assert out["recall@1"] == 1.0 and out["map@r"] == 1.0 and out["nmi"] == pytest.approx(1.0)
    out = PROTOCOLS.get("inshop")(vec_embed, {"query": make("query"), "gallery": make("gallery")}, ks=(1, 10), clustering=False)
    assert out["recall@10"] == 1.0 and out["r_precision"] == 1.0
    with pytest.raises(KeyError, match="needs splits"):
        PROTOCOLS.get("sop")(vec_embed, {"train": []})


def test_longtail_protocol():
    centers = np.eye(3, 4)
    train = [Sample("t", label=c, meta={"vec": centers[c]}) for c, n in ((0, 100), (1, 30), (2, 5)) for _ in range(n)]
    test = [Sample("q", label=c, meta={"vec": centers[c] if c != 2 else centers[0]}) for c in range(3)]
    out = PROTOCOLS.get("imagenet_lt")(vec_embed, {"train": train, "test": test})
    assert (out["many_shot"], out["medium_shot"], out["few_shot"]) == (1.0, 1.0, 0.0)


def test_evaluate_dataset_reads_native_layout(tmp_path):
    from PIL import Image

    from metricvision.metrics import evaluate_dataset, model_embed_fn

    lines = []
    for i, (c, v) in enumerate([(150, 10), (150, 12), (160, 240), (160, 250), (170, 120), (170, 125)], start=1):
        rel = f"{c}/{i}.png"
        (tmp_path / "images" / str(c)).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (v, 255 - v, 0)).save(tmp_path / "images" / rel)
        lines.append((f"{i} {rel}", f"{i} {c}"))
    (tmp_path / "images.txt").write_text("\n".join(a for a, _ in lines) + "\n")
    (tmp_path / "image_class_labels.txt").write_text("\n".join(b for _, b in lines) + "\n")
    to_tensor = lambda im: torch.from_numpy(np.asarray(im, np.float32) / 255).permute(2, 0, 1)  # noqa: E731
    model = lambda x: F.normalize(x.mean((2, 3))[:, :2], dim=1)  # noqa: E731
    out = evaluate_dataset("cub", model_embed_fn(model, to_tensor), tmp_path, ks=(1,), clustering=False)
    assert out["recall@1"] == 1.0 and out["num_queries"] == 6
    with pytest.raises(KeyError, match="unknown dataset .retrieval."):
        evaluate_dataset("retrieval", model_embed_fn(model, to_tensor), tmp_path)


def test_fewshot_grid_runs_every_way_and_shot_on_one_embedding():
    rng = np.random.default_rng(7)
    test = [Sample("g", label=c, meta={"vec": rng.standard_normal(8) + 2 * np.eye(24, 8)[c % 24]})
            for c in range(24) for _ in range(20)]
    calls = []

    def counted(samples):
        calls.append(len(samples))
        return vec_embed(samples)

    out = PROTOCOLS.get("fewshot_grid")(counted, {"test": test}, ways=[5, 20], shots=[1, 5], episodes=50, seed=3)
    assert sum(calls) == len(test)  # one embedding (in batches) for the four settings
    x, y = vec_embed(test), np.array([s.label for s in test])
    for n in (5, 20):
        for k in (1, 5):
            ref = few_shot_accuracy(x, y, n, k, 15, 50, 3)
            assert (out[f"{n}way_{k}shot"], out[f"{n}way_{k}shot_ci95"]) == (ref["accuracy"], ref["ci95"])
    assert out["20way_5shot"] < out["5way_5shot"] and out["episodes"] == 50

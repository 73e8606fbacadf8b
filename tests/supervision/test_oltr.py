"""OLTR meta-embedding: the loss against its formulas, and the recipe through `metricvision train`."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metricvision.cli import main
from metricvision.losses import create_loss
from metricvision.supervision.base import instance_batches
from metricvision.supervision.longtail import first_appearance
from metricvision.supervision.oltr import OLTR, class_centroids

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from native_datasets import pictures, save, write_long_tail  # noqa: E402

TINY = ["model.backbone=small_cnn", "model.pretrained=false", "model.dim=16", "data.image_size=16",
        "data.num_workers=0", "data.batch_size=8", "data.samples_per_class=4", "train.epochs=1", "train.eval_every=0",
        "optim.warmup_steps=1", "train.threads=1", "eval.params.many=8", "eval.params.few=3",
        "supervision.params.samples_per_class=4"]


def test_meta_embedding_follows_its_formulas():
    loss = create_loss("oltr_meta_embedding", num_classes=3, embedding_dim=4, scale=10.0, reachability_scale=0.5)
    g = torch.Generator().manual_seed(0)
    v, M = torch.randn(5, 4, generator=g), torch.randn(3, 4, generator=g)
    assert torch.equal(loss.meta_embedding(v)[0], v)  # no memory yet: the direct feature
    loss.set_centroids(M)
    meta, reach = loss.meta_embedding(v)
    for i in range(5):
        gamma = 0.5 / min(float((v[i] - M[c]).norm()) for c in range(3))
        mem = torch.softmax(loss.hallucinator(v[i]), 0) @ M
        want = gamma * (v[i] + torch.tanh(loss.selector(v[i])) * mem)
        assert abs(float(reach[i]) - gamma) < 1e-5 and torch.allclose(meta[i], want, atol=1e-5)
        n = want.norm()
        logits = 10.0 * (n / (1 + n)) * (want / n) @ F.normalize(loss.weight, dim=1).T
        assert torch.allclose(loss.logits(v[i : i + 1])[0], logits, atol=1e-5)
    y = torch.tensor([0, 1, 2, -1, 0])
    out = loss(v.requires_grad_(True), y)
    kept = [0, 1, 2, 4]  # the unlabeled sample is ignored
    ce = F.cross_entropy(loss.logits(v[kept]), y[kept])
    assert torch.isclose(out.value, ce + 0.01 * 0.5 * ((v[kept] - M[y[kept]]) ** 2).sum(1).mean())
    out.value.backward()
    assert v.grad[3].abs().sum() == 0 and v.grad[0].abs().sum() > 0
    unlabeled = loss(v.detach().requires_grad_(True), torch.full((5,), -1))
    assert unlabeled.value == 0 and unlabeled.value.requires_grad


def test_centroid_loss_repels_and_learns_as_oltrs_code():
    """The repulsion and the centroids' step against a loop over OLTR's DiscCentroidsLoss (forward and backward)."""
    w, rw, margin, lr = 0.1, 0.5, 30.0, 0.3
    loss = create_loss("oltr_meta_embedding", num_classes=3, embedding_dim=4, centroid_weight=w, repel_weight=rw,
                       repel_margin=margin, centroid_lr=lr)
    g = torch.Generator().manual_seed(1)
    v, M = torch.randn(6, 4, generator=g), torch.randn(3, 4, generator=g)
    y = torch.tensor([0, 0, 1, 2, 2, 2])
    loss.set_centroids(M)
    ce = F.cross_entropy(loss.logits(v), y)
    out = loss(v, y)
    B, C = 6, 3
    neg = sum(float(((v[i] - M[c]) ** 2).sum()) for i in range(B) for c in range(C) if c != int(y[i]))
    repel = max(0.0, margin - neg / (B * C))
    attract = sum(0.5 * float(((v[i] - M[y[i]]) ** 2).sum()) for i in range(B)) / B
    assert repel > 0 and abs(out.logs["repel"] - repel) < 1e-4
    assert abs(float(out.value.detach()) - (float(ce.detach()) + w * (attract + rw * repel))) < 1e-4
    for c in range(C):  # OLTR's gradient: attraction (M_c - v_i) / (1 + n_c) / B, repulsion -2 (M_c - v_i) / (B C)
        mine = [i for i in range(B) if int(y[i]) == c]
        grad = sum(M[c] - v[i] for i in mine) / (1 + len(mine)) / B
        grad = grad + rw * sum(-2 * (M[c] - v[i]) for i in range(B) if i not in mine) / (B * C)
        assert torch.allclose(loss.centroids[c], M[c] - lr * w * grad, atol=1e-5)
    loss.eval()
    before = loss.centroids.clone()
    loss(v, y)
    assert torch.equal(loss.centroids, before)  # no step out of training
    with pytest.raises(ValueError, match="repel_weight"):
        create_loss("oltr_meta_embedding", num_classes=3, embedding_dim=4, repel_weight=-1.0)


def test_centroid_momentum_and_decay_step_as_torchs_sgd():
    """OLTR's centroid optimizer (SGD, momentum 0.9, weight decay 5e-4): three steps equal torch.optim.SGD's on the same
    centroid-loss gradients; the velocity is saved with the loss."""
    w, rw, lr, mom, wd = 0.1, 0.5, 0.3, 0.9, 0.05
    loss = create_loss("oltr_meta_embedding", num_classes=3, embedding_dim=4, centroid_weight=w, repel_weight=rw,
                       centroid_lr=lr, centroid_momentum=mom, centroid_weight_decay=wd)
    g = torch.Generator().manual_seed(2)
    M = torch.randn(3, 4, generator=g)
    loss.set_centroids(M)
    ref = torch.nn.Parameter(M.clone())
    opt = torch.optim.SGD([ref], lr=lr, momentum=mom, weight_decay=wd)
    for _ in range(3):
        v, y = torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g)
        counts = 1.0 + torch.bincount(y, minlength=3).float()
        attract = 0.5 * sum(((ref[y[i]] - v[i]) ** 2).sum() / counts[y[i]] for i in range(6)) / 6
        d2 = torch.stack([((v[i] - ref[c]) ** 2).sum() for i in range(6) for c in range(3) if c != int(y[i])])
        repel = (10.0 - d2.sum() / 18).clamp_min(0.0)
        opt.zero_grad()
        (w * (attract + rw * repel)).backward()
        opt.step()
        loss(v, y)
        assert torch.allclose(loss.centroids, ref.detach(), atol=1e-5)
    assert "centroid_velocity" in loss.state_dict()
    with pytest.raises(ValueError, match="centroid_momentum"):
        create_loss("oltr_meta_embedding", num_classes=3, embedding_dim=4, centroid_lr=0.1, centroid_momentum=1.0)


def test_learned_centroids_are_set_once_from_the_class_means():
    """centroid_lr > 0: the memory starts from the plain model's class means and is then the loss's own."""
    loss = create_loss("oltr_meta_embedding", num_classes=2, embedding_dim=2, centroid_lr=0.1)
    trainer = SimpleNamespace(loss=loss, num_classes=2, device="cpu", train_samples=[SimpleNamespace(label=y) for y in (0, 1)],
                              embed=lambda samples: torch.tensor([[float(s.label), 1.0] for s in samples]))
    oltr = OLTR(plain_epochs=1)
    oltr.labels_ = torch.tensor([0, 1])
    oltr.on_epoch_start(trainer, 0)
    assert not bool(loss.has_centroids)
    oltr.on_epoch_start(trainer, 1)
    assert torch.equal(loss.centroids, torch.tensor([[0.0, 1], [1, 1]]))
    loss.set_centroids(torch.full((2, 2), 5.0))  # as if learned
    oltr.on_epoch_start(trainer, 2)
    assert torch.equal(loss.centroids, torch.full((2, 2), 5.0))


def test_centroids_and_column_order():
    e = torch.tensor([[1.0, 0], [3, 0], [0, 2], [9, 9]])
    assert torch.equal(class_centroids(e, torch.tensor([1, 1, 0, -1]), 3), torch.tensor([[0.0, 2], [2, 0], [0, 0]]))
    assert first_appearance([5, -1, 2, 5, 7]).tolist() == [5, 2, 7]


def test_instance_batches_cover_every_sample_before_repeating_one():
    b = np.array(instance_batches(10, 4, 5, torch.Generator().manual_seed(0)))
    assert b.shape == (5, 4)
    assert sorted(b.ravel()[:10].tolist()) == sorted(b.ravel()[10:].tolist()) == list(range(10))
    assert np.array(instance_batches(10, 3, 2, torch.Generator().manual_seed(0))).size == 6
    with pytest.raises(ValueError, match="n >= 1"):
        instance_batches(0, 4, 1, torch.Generator())


def test_plain_epochs_sample_instances_without_memory_then_classes_with_it():
    """OLTR's two stages: uniform over images (a 300-image class fills the batches) without centroids, then P x K."""
    labels = [0] * 300 + [1, 1, 2, 2]
    loss = create_loss("oltr_meta_embedding", num_classes=3, embedding_dim=2)
    trainer = SimpleNamespace(loss=loss, num_classes=3, device="cpu", recipe=SimpleNamespace(train=SimpleNamespace(seed=0), data=SimpleNamespace(batch_size=4)),
                              sampler=[None] * 50, train_samples=[SimpleNamespace(label=y) for y in labels],
                              embed=lambda samples: torch.tensor([[float(s.label), 1.0] for s in samples]))
    oltr = OLTR(samples_per_class=2, plain_epochs=1)
    oltr.on_fit_start(trainer)
    oltr.on_epoch_start(trainer, 0)
    first = np.array(labels)[np.array(oltr.batch_sampler(trainer, 0))]
    assert not bool(loss.has_centroids) and (first == 0).mean() > 0.9
    oltr.on_epoch_start(trainer, 1)
    second = np.array(labels)[np.array(oltr.batch_sampler(trainer, 1))]
    assert bool(loss.has_centroids) and torch.allclose(loss.centroids[:, 0], torch.tensor([0.0, 1, 2]))
    assert (second == 0).mean() < 0.6  # two of the three classes in every batch of 2 x 2
    with pytest.raises(ValueError, match="plain_epochs"):
        OLTR(plain_epochs=-1)


def test_oltr_recipe_trains_and_reports_long_tail_and_open_set(tmp_path, capsys):
    root = write_long_tail(tmp_path / "data", "ImageNet_LT")
    unknown = pictures(5, 2)[4]  # a class never seen in training
    lines = [f"open/{j}.jpg" for j in range(2)]
    for j, rel in enumerate(lines):
        save(root / rel, unknown[j])
    (root / "ImageNet_LT_open.txt").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    sets = [a for kv in TINY + [f"data.path={root}"] for a in ("--set", kv)]
    assert main(["train", "imagenet_lt_oltr", *sets, "--out", str(run), "--json"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    for k in ("accuracy", "many_shot", "few_shot", "oltr_accuracy", "oltr_many_shot", "oltr_medium_shot", "oltr_few_shot",
              "oltr_f_measure", "oltr_auroc"):
        assert k in metrics and (np.isnan(metrics[k]) or 0 <= metrics[k] <= 1), k
    assert (run / "report.html").exists()


def test_emoji_lt_is_the_benchmark_split_and_holds_out_open_classes():
    from metricvision.data import DATASETS
    from metricvision.data.emoji import load_emoji
    from metricvision.data.longtail import long_tail_subset

    splits = DATASETS.create("emoji_lt")
    train, test = load_emoji("train"), load_emoji("test")
    names = sorted({s.meta["subcategory"] for s in train + test})
    y = np.array([names.index(s.meta["subcategory"]) for s in train])
    keep = long_tail_subset(y, 300, 2, seed=0, order="size")  # as benchmarks/settings_longtail.py
    assert [s.label for s in splits["train"]] == y[keep].tolist() and splits["open"] == []
    opened = DATASETS.create("emoji_lt", open_fraction=0.1)
    known = {s.label for s in opened["train"]}
    assert len(opened["open"]) > 0 and all(s.label == -1 for s in opened["open"])
    assert {s.meta["subcategory"] for s in opened["open"]}.isdisjoint({names[c] for c in known})


@pytest.mark.slow  # embeds the emoji test split (about a minute on a loaded 2-core machine)
def test_emoji_lt_oltr_recipe_with_an_open_split(tmp_path, capsys):
    run = tmp_path / "run"
    sets = ["data.options.max_count=8", "data.options.open_fraction=0.1", "data.batch_size=64", "eval.params.many=6",
            "eval.params.few=3", "data.image_size=16"] + [t for t in TINY if not t.startswith(("data.batch_size", "eval.params"))]
    assert main(["train", "emoji_lt_oltr", *[a for kv in sets for a in ("--set", kv)], "--out", str(run), "--json"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"accuracy", "few_shot", "oltr_accuracy", "oltr_f_measure", "oltr_auroc"} <= set(metrics)


def test_modulated_attention_equals_a_loop_and_starts_as_gem():
    from metricvision.models import Embedder
    from metricvision.models.pooling import GeM, ModulatedAttention

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 6, 3, 4, generator=g)
    att = ModulatedAttention(6, reduction=2)
    assert torch.allclose(att(x), GeM()(x), atol=1e-6)  # zero-initialised mask: the identity on the maps
    torch.nn.init.normal_(att.mask.weight, generator=g)
    want = torch.empty_like(x)
    for n in range(2):
        f = x[n].reshape(6, -1)  # (C, HW)
        conv = lambda m, v: m.weight.reshape(m.weight.shape[0], -1) @ v + (0 if m.bias is None else m.bias[:, None])
        theta, phi, gx = conv(att.theta, f), conv(att.phi, f), conv(att.g, f)
        sa = torch.stack([sum(torch.softmax(theta[:, i] @ phi, 0)[j] * gx[:, j] for j in range(12)) for i in range(12)], 1)
        where = torch.softmax(conv(att.spatial, f)[0], 0)
        want[n] = (f + where * conv(att.mask, sa)).reshape(6, 3, 4)
    assert torch.allclose(att.attend(x), want, atol=1e-5)
    emb = Embedder("small_cnn", pooling="modulated_attention", dim=8)  # the backbone's channels reach the pooling
    assert emb.pool.theta.in_channels == 256 and emb(torch.rand(2, 3, 32, 32)).shape == (2, 8)
    with pytest.raises(ValueError, match="reduction in \\[1, channels\\], got 6, 7"):
        ModulatedAttention(6, reduction=7)


def test_baselines_score_their_own_classifier_like_oltrs():
    from metricvision.metrics import open_set_scores, shot_accuracy
    from metricvision.supervision import SUPERVISIONS

    g = torch.Generator().manual_seed(0)
    loss = create_loss("normalized_softmax", num_classes=3, embedding_dim=4, temperature=0.25)
    item = lambda i, y: SimpleNamespace(label=y, i=i)  # noqa: E731
    train = [item(i, y) for i, y in enumerate([7, 7, 7, 2, 2, 5])]  # columns in order of first appearance: 7, 2, 5
    test = [item(6 + i, y) for i, y in enumerate([7, 2, 5, 5, 2, 7, 5])]
    opened = [item(13 + i, -1) for i in range(3)]
    z = F.normalize(torch.randn(16, 4, generator=g), dim=1)
    trainer = SimpleNamespace(eval_splits={"": {"train": train, "test": test, "open": opened}}, num_classes=3, loss=loss,
                              device=torch.device("cpu"), embed=lambda s: z[[x.i for x in s]], _warn=print,
                              recipe=SimpleNamespace(eval=SimpleNamespace(params={"many": 3, "few": 1}),
                                                     supervision=SimpleNamespace(name="instance")))
    metrics: dict = {}
    SUPERVISIONS.create("instance").on_fit_end(trainer, metrics)
    logits = z @ F.normalize(loss.proxies.detach(), dim=1).T / 0.25  # the cosine classifier, by hand
    classes = np.array([7, 2, 5])
    test_y = np.array([x.label for x in test])
    want = shot_accuracy(classes[logits[6:13].argmax(1).numpy()], test_y, np.array([x.label for x in train]), 3, 1)
    want.update(open_set_scores(logits[6:], classes, np.concatenate([test_y, [-1] * 3]), 0.1, temperature=1.0))
    assert set(metrics) == {f"classifier_{k}" for k in want}
    for k, v in want.items():
        assert metrics[f"classifier_{k}"] == pytest.approx(v, nan_ok=True), k
    assert loss.training  # left in training mode
    metrics = {}
    SUPERVISIONS.create("class_balanced", samples_per_class=2).on_fit_end(
        SimpleNamespace(**{**vars(trainer), "loss": create_loss("contrastive")}), metrics)
    assert metrics == {}  # a loss without a classifier adds nothing

"""Supervision settings through the Trainer on a tiny emoji subset (small CNN, 24 px, batch 16)."""
import json

import pytest
import torch

from metricvision.config import load_recipe
from metricvision.engine.trainer import Trainer
from metricvision.supervision import SUPERVISIONS, LabelPropagation, ManifoldMining

TINY = ["model.backbone=small_cnn", "model.pretrained=false", "model.pooling=avg", "data.image_size=24",
        "data.batch_size=16", "train.epochs=2", "optim.warmup_steps=2", "eval.clustering=false"]
# settings that need their recipe: a teacher run (test_distill_recipe.py), a task sequence (test_incremental_metric.py:
# incremental_metric, icarl),
# the meta-embedding loss (test_oltr.py), maps of 5 x 5 (test_dense_implant.py)
NEED_A_RUN = {"distillation", "incremental_metric", "icarl", "oltr", "dense_classification"}


def supervision_events(run_dir):
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "supervision"]


def test_label_propagation_recipe_trains_on_pseudo_labels(tmp_path, emoji_small):
    train, test = emoji_small
    recipe = load_recipe("semi_propagation_10", TINY + ["supervision.params.label_fraction=0.5", "supervision.params.k=5"])
    t = Trainer(recipe, tmp_path / "run", train, test)
    (sup,) = [h for h in t.hooks if isinstance(h, LabelPropagation)]
    seen = []
    t.hooks.append(type("Spy", (), {"targets": lambda self, tr, idx, y: seen.append((idx.clone(), y.clone())) or y})())
    metrics = t.fit()
    assert len(supervision_events(tmp_path / "run")) == 2 and 0 < metrics["map@r"] <= 1
    truth = torch.tensor([s.label for s in train])
    hidden = sup.given_ < 0
    assert hidden.any() and bool((sup.given_[~hidden] == truth[~hidden]).all())
    # every sample got a pseudo-label (their quality on real embeddings: test_propagation.py)
    assert bool((sup.labels_ >= 0).all()) and int(sup.labels_.max()) < 24
    # in the last epoch the loss saw the targets of the last refresh, hidden samples included
    last = seen[-len(t.sampler):]
    idx = torch.cat([i for i, _ in last])
    assert torch.equal(torch.cat([y for _, y in last]), sup.labels_[idx])
    assert bool(hidden[idx].any())


def test_manifold_mining_recipe_trains_without_labels(tmp_path, emoji_small):
    train, test = emoji_small
    recipe = load_recipe("unsup_manifold_mining", TINY + ["model.dim=32", "train.epochs=1", "supervision.params.num_anchors=60"])
    t = Trainer(recipe, tmp_path / "run", train, test)
    (sup,) = [h for h in t.hooks if isinstance(h, ManifoldMining)]
    metrics = t.fit()
    (event,) = supervision_events(tmp_path / "run")
    assert event["anchors_with_tuples"] > 0 and bool((sup.labels_ == -1).all())
    losses = t.history["step_loss"]
    assert len(losses) == len(t.sampler) and all(l == l for l in losses)  # the schedule's steps, anchors repeating
    assert 0 < metrics["map@r"] <= 1


@pytest.mark.parametrize("name", [n for n in SUPERVISIONS.names() if n not in NEED_A_RUN])
def test_every_registered_supervision_trains_one_epoch_with_its_defaults(tmp_path, emoji_small, name):
    train, test = emoji_small
    t = Trainer(load_recipe("default", TINY + ["train.epochs=1", f"supervision.name={name}"]), tmp_path / "run", train, test)
    metrics = t.fit()
    assert len(t.history["step_loss"]) > 0 and all(v == v for v in t.history["step_loss"])
    assert 0 < metrics["map@r"] <= 1


def test_unknown_supervision_names_the_choices(tmp_path, emoji_small):
    train, test = emoji_small
    with pytest.raises(Exception, match="label_propagation"):
        Trainer(load_recipe("default", TINY + ["supervision.name=propagation"]), tmp_path / "run", train, test)


def test_episodic_recipe_trains_on_episodes(tmp_path, emoji_small):
    train, test = emoji_small
    recipe = load_recipe("fewshot_episodic", TINY + ["train.epochs=1", "supervision.params.n_way=3"])
    t = Trainer(recipe, tmp_path / "run", train, test)
    batches = []
    t.hooks.append(type("Spy", (), {"targets": lambda self, tr, idx, y: batches.append(y.clone()) or y})())
    metrics = t.fit()
    assert len(batches) == len(t.sampler) and 0 < metrics["map@r"] <= 1
    for y in batches:  # 3-way episodes of 1 support + 3 queries per class
        assert len(y) == 12 and sorted(torch.bincount(y)[torch.bincount(y) > 0].tolist()) == [4, 4, 4]

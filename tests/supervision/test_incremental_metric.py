"""Class-incremental metric learning through the Trainer, and SDC against a plain loop."""
import math

import numpy as np
import pytest
import torch

from metricvision.config import load_recipe
from metricvision.engine.trainer import Trainer
from metricvision.supervision.incremental_metric import IncrementalMetric, drift_compensation, held_out
from resume_helpers import KillAt, Killed

TINY = ["model.backbone=small_cnn", "model.pretrained=false", "model.pooling=avg", "data.image_size=24", "model.dim=16",
        "data.batch_size=16", "data.samples_per_class=4", "optim.warmup_steps=2", "eval.clustering=false",
        "train.epochs=3", "incremental.tasks=3", "incremental.epochs_per_task=1", "incremental.memory=24"]


def test_drift_compensation_equals_a_loop():
    g = torch.Generator().manual_seed(0)
    means, old, new = torch.randn(3, 4, generator=g), torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    want = []
    for mu in means:
        w = [math.exp(-float(((o - mu) ** 2).sum()) / (2 * 0.8**2)) for o in old]
        want.append(mu + sum(wi * (n - o) for wi, n, o in zip(w, new, old)) / sum(w))
    assert torch.allclose(drift_compensation(means, old, new, 0.8), torch.stack(want), atol=1e-5)
    # no drift: means unchanged; a uniform drift moves every mean by it
    assert torch.allclose(drift_compensation(means, old, old, 0.8), means)
    assert torch.allclose(drift_compensation(means, old, old + 0.5, 0.8), means + 0.5, atol=1e-6)
    with pytest.raises(ValueError, match="sigma must be > 0, got 0"):
        drift_compensation(means, old, new, 0.0)


def test_held_out_keeps_a_training_sample_of_every_class():
    y = np.array([0] * 6 + [1] * 2 + [2])
    mask = held_out(y, 1 / 3, 0)
    assert [int(mask[y == c].sum()) for c in range(3)] == [2, 1, 0]


def test_incremental_recipe_learns_tasks_with_memory_and_reports_per_task_accuracy(tmp_path, emoji_small):
    train, test = emoji_small
    t = Trainer(load_recipe("incremental_metric", TINY), tmp_path / "run", train, test)
    (hook,) = [h for h in t.hooks if isinstance(h, IncrementalMetric)]
    drawn = []
    t.hooks.append(type("Spy", (), {"targets": lambda self, tr, idx, y: drawn.append((tr.epoch, idx.clone())) or y})())
    metrics = t.fit()
    labels = np.array([s.label for s in train])
    for epoch, idx in drawn:  # task t trains on its own classes and the exemplars only, never on held-out samples
        i = idx.numpy()
        assert not hook.test_[i].any()
        if epoch == 0:
            assert np.isin(labels[i], hook.tasks_[0]).all()
    assert len(hook.memory_) <= 24 and len(hook.memory_.exemplars_) == 24
    for name in ("nme", "sdc"):
        acc = np.array(metrics[f"incremental_{name}_task_accuracy"], dtype=float)
        assert acc.shape == (3, 3) and np.isnan(acc[np.triu_indices(3, 1)]).all()
        assert 0 <= metrics[f"incremental_{name}_average_incremental_accuracy"] <= 1
        assert "incremental_nme_forgetting" in metrics
    assert 0 < metrics["map@r"] <= 1


def test_incremental_needs_epochs_matching_the_tasks(tmp_path, emoji_small):
    train, test = emoji_small
    t = Trainer(load_recipe("incremental_metric", TINY + ["train.epochs=2"]), tmp_path / "run", train, test)
    with pytest.raises(ValueError, match="train.epochs must be incremental.tasks x incremental.epochs_per_task = 3, got 2"):
        t.fit()


def test_report_plots_the_accuracy_of_each_task_over_time(tmp_path):
    from metricvision.report import write_report

    metrics = {"incremental_nme_task_accuracy": [[0.9, None], [0.7, 0.8]], "map@r": 0.5}
    page = write_report(tmp_path, "inc", metrics, {"step_loss": []}, {}).read_text()
    assert "alt='task accuracy'" in page
    assert "alt='task accuracy'" not in write_report(tmp_path, "x", {"map@r": 0.5}, {"step_loss": []}, {}).read_text()


def test_icarl_recipe_runs_the_same_task_sequence(tmp_path, emoji_small):
    from metricvision.supervision.icarl import ICaRL

    train, test = emoji_small
    metric = Trainer(load_recipe("incremental_metric", TINY), tmp_path / "metric", train, test)
    t = Trainer(load_recipe("incremental_icarl", TINY), tmp_path / "icarl", train, test)
    (hook,) = [h for h in t.hooks if isinstance(h, ICaRL)]
    seen = []
    t.hooks.append(type("Spy", (), {"targets": lambda self, tr, idx, y: seen.append(y.clone()) or y})())
    metrics = t.fit()
    (m_hook,) = [h for h in metric.hooks if isinstance(h, IncrementalMetric)]
    m_hook.on_fit_start(metric)
    assert [a.tolist() for a in m_hook.tasks_] == [a.tolist() for a in hook.tasks_]
    assert bool((torch.cat(seen) == -1).all())  # the metric loss sees no labels
    assert 0 <= metrics["incremental_nme_average_incremental_accuracy"] <= 1 and hook.old_classifier_ is not None
    assert "classifier.weight" in t._modules()["hook_ICaRL"].state_dict()  # checkpointed with the run


@pytest.mark.parametrize("recipe", ["incremental_metric", "incremental_icarl"])
def test_incremental_state_survives_a_kill_and_the_run_resumes(tmp_path, emoji_small, recipe):
    # bitwise equality with an uninterrupted run needs separate processes (two Trainers in one process differ
    # in the last float bits); here the state a resumed run starts from must equal the killed run's
    train, test = emoji_small
    killed = Trainer(load_recipe(recipe, TINY), tmp_path / "run", train, test)
    killed.hooks.append(KillAt(2))  # after task 2 of 3: memory, means and the previous embeddings are all set
    with pytest.raises(Killed):
        killed.fit()
    t = Trainer(load_recipe(recipe, TINY), tmp_path / "run", train, test)
    assert t.restore() and t.epoch == 2
    t._call("on_fit_start")
    (a,), (b,) = [[h for h in x.hooks if isinstance(h, IncrementalMetric)] for x in (killed, t)]
    assert list(a.memory_.exemplars_) == list(b.memory_.exemplars_) and len(a.memory_) > 0
    assert all(torch.equal(a.memory_.exemplars_[c], b.memory_.exemplars_[c]) for c in a.memory_.exemplars_)
    assert list(a.means_) == list(b.means_) and all(torch.equal(a.means_[c], b.means_[c]) for c in a.means_)
    assert torch.equal(a.previous_, b.previous_)
    for k in ("nme", "sdc"):
        assert np.array_equal(a.accuracy_[k], b.accuracy_[k], equal_nan=True) and a.seen_[k] == b.seen_[k]
        assert len(b.seen_[k]) == 2
    if recipe == "incremental_icarl":
        assert all(torch.equal(p, q) for p, q in zip(a.old_classifier_, b.old_classifier_))
    t = Trainer(load_recipe(recipe, TINY), tmp_path / "run", train, test)
    metrics = t.fit(resume=True)
    assert [e["epoch"] for e in t.history["epochs"]] == [1, 2, 3]
    acc = np.array(metrics["incremental_nme_task_accuracy"], dtype=float)
    assert acc.shape == (3, 3) and not np.isnan(acc[np.tril_indices(3)]).any()


def test_incremental_refuses_a_checkpoint_without_its_memory(tmp_path, emoji_small):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    train, test = emoji_small
    recipe = TINY + ["train.epochs=1", "incremental.tasks=1"]
    Trainer(load_recipe("incremental_metric", recipe), tmp_path / "run", train, test).fit()
    path = tmp_path / "run" / "checkpoint.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    assert any(k.startswith("state_IncrementalMetric.memory") for k in tensors)
    save_file({k: v for k, v in tensors.items() if not k.startswith("state_")}, str(path), metadata=meta)  # an older checkpoint
    t = Trainer(load_recipe("incremental_metric", recipe), tmp_path / "run", train, test)
    with pytest.raises(ValueError, match="'incremental_metric' cannot resume \\(at epoch 1\\)"):
        t.fit(resume=True)

"""The Trainer end to end on a tiny emoji subset: learning, checkpoints, resume after a kill."""
import json

import pytest
import torch

from metricvision.config import load_recipe
from metricvision.engine.checkpoint import load_checkpoint, read_info, save_checkpoint
from metricvision.engine.runs import load_run
from metricvision.engine.trainer import CHECKPOINT, Trainer

TINY = ["model.backbone=small_cnn", "model.pretrained=false", "model.pooling=avg", "data.image_size=24",
        "data.batch_size=16", "train.epochs=3", "optim.warmup_steps=2", "eval.clustering=false"]


def tiny_recipe(*extra):
    return load_recipe("default", TINY + list(extra))


class KillAt:
    """Raises KeyboardInterrupt in the middle of an epoch, like Ctrl-C."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch, self.seen = epoch, batch, 0

    def on_epoch_start(self, trainer, epoch):
        self.current, self.seen = epoch, 0

    def targets(self, trainer, indices, labels):
        self.seen += 1
        if self.current == self.epoch and self.seen == self.batch:
            raise KeyboardInterrupt
        return labels


def test_train_writes_run_folder_and_improves(tmp_path, emoji_small):
    train, _ = emoji_small
    # scored on the training identities: nine steps are enough to learn those, not to generalize
    t = Trainer(tiny_recipe("train.epochs=4"), tmp_path / "run", train, train)
    before = t.evaluate(clustering=False)
    metrics = t.fit()
    for f in ("recipe.yaml", CHECKPOINT, "metrics.json", "log.jsonl"):
        assert (tmp_path / "run" / f).exists()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["map@r"] == pytest.approx(metrics["map@r"])
    losses = [e["loss"] for e in t.history["epochs"]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert metrics["map@r"] > before["map@r"]
    recipe, model = load_run(tmp_path / "run")
    assert recipe.train.epochs == 4
    x = torch.rand(2, 3, 24, 24)
    t.model.eval()
    assert torch.allclose(model(x), t.model(x), atol=1e-6)


def test_kill_mid_epoch_then_resume_equals_uninterrupted(tmp_path, emoji_small):
    train, test = emoji_small
    full = Trainer(tiny_recipe(), tmp_path / "full", train, test).fit()
    killed = Trainer(tiny_recipe(), tmp_path / "killed", train, test, hooks=[KillAt(epoch=1, batch=2)])
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert read_info(tmp_path / "killed" / CHECKPOINT)["epoch"] == 1
    resumed = Trainer(tiny_recipe(), tmp_path / "killed", train, test).fit(resume=True)
    for k in ("precision@1", "map@r", "r_precision"):
        assert resumed[k] == pytest.approx(full[k], abs=1e-6), k


def test_proxy_loss_gets_its_own_learning_rate(tmp_path, emoji_small):
    train, test = emoji_small
    t = Trainer(tiny_recipe("loss.name=proxy_anchor", "loss.params={}", "optim.loss_lr=0.05", "train.epochs=1"), tmp_path, train, test)
    groups = t.optimizer.param_groups
    assert len(groups) == 3 and groups[2]["params"][0] is t.loss.proxies
    assert t.loss.proxies.shape == (24, 128)
    before = t.loss.proxies.detach().clone()
    t.fit()
    assert not torch.equal(before, t.loss.proxies.detach())


def test_checkpoint_is_atomic_and_roundtrips(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.safetensors", {"m": model}, opt, {"epoch": 4})
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]
    other = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(other.parameters())
    assert load_checkpoint(tmp_path / "c.safetensors", {"m": other}, opt2) == {"epoch": 4}
    assert torch.equal(other.weight, model.weight)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(FileNotFoundError, match="checkpoint .*missing.safetensors not found"):
        load_checkpoint(tmp_path / "missing.safetensors", {"m": other})


def test_bad_loss_parameter_names_allowed(tmp_path, emoji_small):
    train, test = emoji_small
    with pytest.raises(ValueError, match="bad parameters for loss 'multi_similarity'.*allowed"):
        Trainer(tiny_recipe("loss.params={gamma: 1}"), tmp_path, train, test)


class FewerBatches:
    """A supervision that draws only its first two of the schedule's batches."""

    def batch_sampler(self, trainer, epoch):
        return list(trainer.sampler)[:2]


def test_a_hook_drawing_fewer_batches_than_the_schedule_counts_is_warned(tmp_path, emoji_small):
    train, test = emoji_small
    t = Trainer(tiny_recipe("train.epochs=1"), tmp_path / "run", train, test, hooks=[FewerBatches()])
    with pytest.warns(UserWarning, match=f"FewerBatches drew 2 batches for epoch 1; the schedule counts {len(t.sampler)}"):
        t.train_epoch(0)


def test_a_recipe_with_taps_trains_a_hypercolumn_and_reloads(tmp_path, emoji_small, capsys):
    train, test = emoji_small
    t = Trainer(tiny_recipe("train.epochs=1", "model.taps=[2, 4]"), tmp_path / "run", train, test)
    t.fit()
    recipe, model = load_run(tmp_path / "run")
    assert recipe.model.taps == [2, 4] and model.taps == (2, 4) and model.head.in_features == 256 + 64 + 128
    x = torch.rand(2, 3, 24, 24)
    t.model.eval()
    assert torch.allclose(model(x), t.model(x), atol=1e-6)
    from metricvision.cli import main

    assert main(["implant", str(tmp_path / "run")]) != 0
    assert "implanting runs the backbone's last blocks" in capsys.readouterr().err

"""Training guards: non-finite losses / weights, time limits, resuming with the recorded recipe."""
import json

import pytest
import torch
import yaml

from metricvision.cli import main
from metricvision.config import load_recipe
from metricvision.engine.checkpoint import read_info
from metricvision.engine.runs import resumed_recipe
from metricvision.engine.trainer import CHECKPOINT, NonFiniteError, Trainer
from metricvision.losses import LossOutput

TINY = ["model.backbone=small_cnn", "model.pretrained=false", "model.pooling=avg", "data.image_size=24",
        "data.batch_size=16", "train.epochs=3", "optim.warmup_steps=2", "eval.clustering=false"]


def tiny_recipe(*extra):
    return load_recipe("default", TINY + list(extra))


class PoisonWeights:
    """Sets one weight to NaN at the start of ``epoch`` (what a diverging run leaves behind)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_start(self, trainer, epoch):
        if epoch == self.epoch:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))


class NaNLossAtStep(Trainer):
    """A Trainer whose loss is NaN at one global step (a bad batch), finite elsewhere."""

    bad_step = 2

    def batch_loss(self, x, y):
        out = super().batch_loss(x, y)
        self.calls = getattr(self, "calls", 0) + 1
        return LossOutput(out.value * float("nan")) if self.calls == self.bad_step else out


def test_override_accepts_what_float_accepts():
    assert load_recipe("default", ["optim.lr=1e-4"]).optim.lr == 1e-4
    assert load_recipe("default", ["optim.lr=3E-5", "optim.head_lr=1_000"]).optim.head_lr == 1000.0
    with pytest.raises(ValueError, match="optim.lr must be float, got 'fast'"):
        load_recipe("default", ["optim.lr=fast"])
    with pytest.raises(ValueError, match="train.nonfinite must be 'stop' or 'skip', got 'ignore'"):
        load_recipe("default", ["train.nonfinite=ignore"])


def test_diverging_lr_stops_and_keeps_the_good_checkpoint(tmp_path, emoji_small):
    train, test = emoji_small
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError, match="non-finite loss at epoch 2 step 1.*last good checkpoint .* is kept"):
        Trainer(tiny_recipe(), run, train, test, hooks=[PoisonWeights(epoch=1)]).fit()
    assert read_info(run / CHECKPOINT)["epoch"] == 1
    good = Trainer(tiny_recipe(), run, train, test)
    assert good.restore() and all(torch.isfinite(p).all() for p in good.model.state_dict().values())


def test_huge_lr_never_writes_nonfinite_weights(tmp_path, emoji_small):
    train, test = emoji_small
    with pytest.raises(NonFiniteError, match="non-finite"):
        Trainer(tiny_recipe("optim.lr=1e30", "optim.head_lr=1e30", "optim.warmup_steps=1"), tmp_path, train, test).fit()
    assert not (tmp_path / CHECKPOINT).exists()


def test_save_refuses_nonfinite_weights(tmp_path, emoji_small):
    train, test = emoji_small
    t = Trainer(tiny_recipe("train.epochs=1"), tmp_path, train, test)
    t.save()
    before = (tmp_path / CHECKPOINT).read_bytes()
    PoisonWeights(0).on_epoch_start(t, 0)
    with pytest.raises(NonFiniteError, match="weight tensors are non-finite.*not saved: the last good checkpoint"):
        t.save()
    assert (tmp_path / CHECKPOINT).read_bytes() == before


def test_skip_mode_skips_the_bad_step_and_says_so(tmp_path, emoji_small):
    train, test = emoji_small
    with pytest.raises(NonFiniteError, match="non-finite loss at epoch 1 step 2"):
        NaNLossAtStep(tiny_recipe(), tmp_path / "stop", train, test).fit()
    t = NaNLossAtStep(tiny_recipe("train.nonfinite=skip"), tmp_path / "skip", train, test)
    metrics = t.fit()
    assert metrics["warnings"] == ["epoch 1: skipped 1 step(s) with a non-finite loss or gradient (train.nonfinite=skip)"]
    assert json.loads((tmp_path / "skip" / "metrics.json").read_text())["warnings"] == metrics["warnings"]
    assert len(t.history["step_loss"]) == 3 * len(t.sampler) - 1
    assert all(torch.isfinite(p).all() for p in t.model.state_dict().values())


def test_time_limit_warns_records_and_still_decays_the_lr(tmp_path, emoji_small, capsys):
    train, test = emoji_small
    t = Trainer(tiny_recipe("train.max_minutes=1e-6"), tmp_path, train, test)
    metrics = t.fit()
    assert metrics["epochs_trained"] == 1
    assert metrics["warnings"][-1] == "stopped at epoch 1/3 by train.max_minutes=1e-06"
    assert "schedule shortened to 1/3 epochs" in metrics["warnings"][0]
    assert "warning: stopped at epoch 1/3 by train.max_minutes" in capsys.readouterr().err
    # the shortened schedule is part of the checkpoint: resuming does not train on
    assert Trainer(tiny_recipe("train.max_minutes=1e-6"), tmp_path, train, test).fit(resume=True)["epochs_trained"] == 1


def test_time_limit_shortens_the_cosine_to_the_epochs_that_fit(tmp_path, emoji_small):
    train, test = emoji_small
    t = Trainer(tiny_recipe("train.epochs=6", "train.max_minutes=1"), tmp_path, train, test)
    t.train_epoch(0)
    t.epoch = 1
    t._apply_time_limit(epoch_seconds=25.0, elapsed=25.0)  # 60 s allow 1 + floor(35 / 25) = 2 epochs
    assert t.planned_epochs() == 2 and t.scheduler.get_last_lr()[0] > 1e-4
    t.train_epoch(1)
    assert t.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_no_time_limit_in_shipped_recipes():
    from metricvision.config import RECIPES_DIR

    for f in RECIPES_DIR.glob("*.yaml"):
        assert load_recipe(str(f)).train.max_minutes == 0, f.name


def test_resume_uses_the_recorded_recipe(tmp_path, emoji_small):
    train, test = emoji_small
    run = tmp_path / "run"
    Trainer(tiny_recipe("train.epochs=1"), run, train, test).fit()
    assert resumed_recipe(run).train.epochs == 1
    assert resumed_recipe(run).model.backbone == "small_cnn"
    assert resumed_recipe(run, ["train.seed=0"]).train.seed == 0  # same value: no change
    with pytest.raises(ValueError, match=r"--resume: --set would change the run's recorded recipe: train.epochs=2 \(recorded 1\)"):
        resumed_recipe(run, ["train.epochs=2"])
    assert resumed_recipe(run, ["train.epochs=2"], allow_changes=True).train.epochs == 2


def test_cli_resume_keeps_the_recorded_recipe(tmp_path, emoji_small, capsys):
    train, test = emoji_small
    run = tmp_path / "run"
    Trainer(tiny_recipe("train.epochs=1"), run, train, test).fit()
    assert main(["train", "--out", str(run), "--resume", "--set", "train.epochs=5"]) == 2
    assert "--set would change the run's recorded recipe: train.epochs=5 (recorded 1)" in capsys.readouterr().err
    recorded = (run / "recipe.yaml").read_text()
    assert main(["train", "--out", str(run), "--resume", "--no-report"]) == 0  # already finished: evaluates only
    assert (run / "recipe.yaml").read_text() == recorded
    assert yaml.safe_load(recorded)["model"]["backbone"] == "small_cnn"

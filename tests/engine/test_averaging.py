"""train.ema: a moving average of the weights is the model evaluated and saved, and survives a kill."""
import pytest
import torch

from metricvision.config import load_recipe
from metricvision.engine.averaging import ModelAverage
from metricvision.engine.trainer import Trainer
from metricvision.models.averaging import ema_step

TINY = ["model.backbone=small_cnn", "model.pretrained=false", "model.pooling=avg", "data.image_size=24", "model.dim=16",
        "data.batch_size=16", "train.epochs=1", "optim.warmup_steps=2", "eval.clustering=false", "train.ema=0.6"]


class Record:
    """The model's weights after every step (this hook runs before the average's)."""

    def __init__(self) -> None:
        self.states = []

    def on_step_end(self, trainer) -> None:
        self.states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})


class Stop(Exception):
    pass


class StopAt:
    def on_epoch_start(self, trainer, epoch: int) -> None:
        if epoch == 1:
            raise Stop


def test_ema_step_is_the_decayed_average_with_a_true_mean_first():
    a, w = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    start = a.weight.detach().clone()
    ema_step(a, w, 0.9, 1)  # d = min(0.9, 1 - 1/2) = 0.5
    assert torch.allclose(a.weight, 0.5 * start + 0.5 * w.weight.detach())
    before = a.weight.detach().clone()
    ema_step(a, w, 0.9, 100)  # d = 0.9
    assert torch.allclose(a.weight, 0.9 * before + 0.1 * w.weight.detach())


def test_the_trained_model_is_the_average_of_its_steps_weights(tmp_path, emoji_small):
    train, test = emoji_small
    rec = Record()
    t = Trainer(load_recipe("default", TINY), tmp_path / "run", train, test, hooks=[rec])
    t.fit()
    expected = {k: v.clone() for k, v in t.hooks[-1].average_.state_dict().items()}
    assert isinstance(t.hooks[-1], ModelAverage) and len(rec.states) == len(t.sampler) >= 2
    # replay: the average starts at the initial weights; step s has d = min(0.6, 1 - 1 / (s + 1))
    init = Trainer(load_recipe("default", TINY), tmp_path / "fresh", train, test).model.state_dict()
    avg = {k: v.clone().float() for k, v in init.items()}
    for s, state in enumerate(rec.states, start=1):
        d = min(0.6, 1 - 1 / (s + 1))
        for k, v in state.items():
            avg[k] = d * avg[k] + (1 - d) * v.float() if v.is_floating_point() and "running" not in k else v.float()
    final = t.model.state_dict()
    for k, v in expected.items():
        if v.is_floating_point():
            assert torch.allclose(final[k], v) and torch.allclose(final[k].float(), avg[k], atol=1e-5), k
    assert not all(torch.equal(final[k], rec.states[-1][k]) for k in final)  # not the last step's weights


def test_a_killed_run_resumes_with_its_average(tmp_path, emoji_small):
    train, test = emoji_small
    recipe = TINY + ["train.epochs=2"]
    whole = Trainer(load_recipe("default", recipe), tmp_path / "whole", train, test)
    whole.fit()
    killed = Trainer(load_recipe("default", recipe), tmp_path / "run", train, test, hooks=[StopAt()])
    with pytest.raises(Stop):
        killed.fit()
    resumed = Trainer(load_recipe("default", recipe), tmp_path / "run", train, test)
    resumed.fit(resume=True)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ema_outside_0_1_is_refused(tmp_path, emoji_small):
    train, test = emoji_small
    with pytest.raises(ValueError, match=r"train.ema must be in \(0, 1\).*got 1.5"):
        Trainer(load_recipe("default", TINY[:-1] + ["train.ema=1.5"]), tmp_path / "run", train, test)

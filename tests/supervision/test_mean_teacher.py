"""Label propagation with a mean teacher through the Trainer."""
import json
import math

import pytest
import torch

from metricvision.config import load_recipe
from metricvision.engine.trainer import Trainer
from metricvision.supervision.mean_teacher import MeanTeacherPropagation, sigmoid_ramp_up
from resume_helpers import KillAt, Killed

TINY = ["model.backbone=small_cnn", "model.pretrained=false", "model.pooling=avg", "data.image_size=24", "model.dim=16",
        "data.batch_size=16", "train.epochs=1", "optim.warmup_steps=2", "eval.clustering=false",
        "supervision.params.label_fraction=0.5", "supervision.params.k=5", "supervision.params.ema_decay=0.5"]


def test_mean_teacher_recipe_trains_with_consistency_to_an_ema(tmp_path, emoji_small):
    train, test = emoji_small
    recipe = TINY + ["supervision.params.final_teacher=false"]
    t = Trainer(load_recipe("semi_propagation_mean_teacher_10", recipe), tmp_path / "run", train, test)
    (hook,) = [h for h in t.hooks if isinstance(h, MeanTeacherPropagation)]
    metrics = t.fit()
    assert 0 < metrics["map@r"] <= 1 and len(t.history["step_loss"]) == len(t.sampler)
    events = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any(e["event"] == "supervision" and "pseudo_certainty" in e for e in events)
    # the teacher moved with the student but lags it
    s, te = next(t.model.parameters()), next(hook.teacher_.parameters())
    assert not torch.equal(s, te) and not te.requires_grad
    # one step: teacher <- 0.5 teacher + 0.5 student, then the consistency of the batch (the student's own input)
    hook.second_view = False
    before = [p.clone() for p in hook.teacher_.parameters()]
    x = torch.rand(4, 3, 24, 24)
    t.model.train()
    z = t.model(x)
    out = hook.extra_loss(t, torch.arange(4), z)
    for b, p, q in zip(before, hook.teacher_.parameters(), t.model.parameters()):
        assert torch.allclose(p, 0.5 * b + 0.5 * q.detach(), atol=1e-6)
    target = hook.teacher_(x)
    assert torch.allclose(out.value, out.logs["consistency_weight"] * ((z - target) ** 2).sum(1).mean(), atol=1e-6)


def test_mean_teacher_and_pseudo_labels_survive_a_kill(tmp_path, emoji_small):
    train, test = emoji_small
    # epoch 2 trains on epoch 1's pseudo-labels; a slow teacher differs from the student it would restart from
    recipe = TINY + ["train.epochs=2", "supervision.params.refresh_every=2", "supervision.params.ema_decay=0.9"]
    killed = Trainer(load_recipe("semi_propagation_mean_teacher_10", recipe), tmp_path / "run", train, test)
    killed.hooks.append(KillAt(1))
    with pytest.raises(Killed):
        killed.fit()
    t = Trainer(load_recipe("semi_propagation_mean_teacher_10", recipe), tmp_path / "run", train, test)
    assert t.restore() and t.epoch == 1
    t._call("on_fit_start")
    (a,), (b,) = [[h for h in x.hooks if isinstance(h, MeanTeacherPropagation)] for x in (killed, t)]
    assert torch.equal(a.labels_, b.labels_) and torch.equal(a.weights_, b.weights_) and bool((b.labels_ >= 0).all())
    teacher, student = b.teacher_.state_dict(), t.model.state_dict()
    assert all(torch.equal(v, teacher[k]) for k, v in a.teacher_.state_dict().items())
    assert not all(torch.equal(v, student[k]) for k, v in teacher.items())
    assert 0 < Trainer(load_recipe("semi_propagation_mean_teacher_10", recipe), tmp_path / "run", train, test).fit(resume=True)["map@r"] <= 1


def test_the_teacher_sees_another_augmentation_and_the_consistency_ramps_up(tmp_path, emoji_small):
    train, test = emoji_small
    t = Trainer(load_recipe("semi_propagation_mean_teacher_10", TINY + ["supervision.params.ramp_up=2"]), tmp_path / "run",
                train, test)
    (hook,) = [h for h in t.hooks if isinstance(h, MeanTeacherPropagation)]
    t._call("on_fit_start")
    idx = torch.arange(4)
    x = torch.stack([t.train_set[i][0] for i in range(4)]).float() / 255
    t.model.train()
    z = t.model(x)
    assert hook.teacher_input(t, idx).shape == x.shape and not torch.equal(hook.teacher_input(t, idx), x)
    first = hook.extra_loss(t, idx, z)
    assert first.logs["consistency_weight"] == pytest.approx(hook.consistency * sigmoid_ramp_up(1, 2 * len(t.sampler)))
    assert first.logs["consistency_weight"] < 0.1 * hook.consistency and first.logs["consistency"] > 0
    hook.steps_ = 10 * len(t.sampler)
    assert hook.consistency_weight(t) == hook.consistency


def test_sigmoid_ramp_up():
    assert sigmoid_ramp_up(0, 10) == pytest.approx(math.exp(-5)) and sigmoid_ramp_up(5, 10) == pytest.approx(math.exp(-1.25))
    assert sigmoid_ramp_up(10, 10) == sigmoid_ramp_up(20, 10) == sigmoid_ramp_up(3, 0) == 1.0


def test_the_teacher_propagates_and_becomes_the_final_model(tmp_path, emoji_small):
    train, test = emoji_small
    recipe = TINY + ["supervision.params.teacher_propagates=true", "supervision.params.final_teacher=true",
                     "supervision.params.ema_decay=0.9"]
    t = Trainer(load_recipe("semi_propagation_mean_teacher_10", recipe), tmp_path / "run", train, test)
    (hook,) = [h for h in t.hooks if isinstance(h, MeanTeacherPropagation)]
    seen = []
    refresh = hook.refresh
    hook.refresh = lambda e: seen.append(e) or refresh(e)
    t.fit()
    teacher = hook.teacher_.state_dict()
    assert all(torch.equal(v, teacher[k]) for k, v in t.model.state_dict().items())
    # a refresh embeds the training set with the teacher (moved away from the student here), not the student
    hook.teacher_.load_state_dict({k: v * 1.1 if v.is_floating_point() else v for k, v in teacher.items()})
    hook.on_epoch_start(t, 0)
    student = t.embed(t.train_samples)
    t.model = hook.teacher_
    assert len(seen) == 2 and torch.allclose(seen[1], t.embed(t.train_samples)) and not torch.allclose(seen[1], student)


def test_mean_teacher_checks_its_decay():
    with pytest.raises(ValueError, match="ema_decay must be in \\[0, 1\\), got 1.5"):
        MeanTeacherPropagation(ema_decay=1.5)


def test_the_distributed_trainer_adds_the_hooks_loss_terms_as_the_trainer_does(tmp_path, emoji_small):
    """Alone (no process group), DistributedTrainer's step is the Trainer's, the mean teacher's term included."""
    from metricvision.engine.ray_train import DistributedTrainer

    train, test = emoji_small
    ref = Trainer(load_recipe("semi_propagation_mean_teacher_10", TINY), tmp_path / "single", train, test)
    got = DistributedTrainer(load_recipe("semi_propagation_mean_teacher_10", TINY), tmp_path / "ddp", train, test)
    assert got.fit()["map@r"] == ref.fit()["map@r"]
    assert got.history["step_loss"] == ref.history["step_loss"]

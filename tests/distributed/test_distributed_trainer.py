"""2-process DDP training (gathered loss, class-sharded batches) matches a 1-process run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metricvision.config import load_recipe
from metricvision.data import relabel
from metricvision.data.transforms import as_float_images
from metricvision.engine.distributed import launch_local
from metricvision.engine.trainer import Trainer

pytestmark = pytest.mark.distributed

OVERRIDES = [
    "model.backbone=small_cnn", "model.pretrained=false", "model.dim=32", "data.image_size=32",
    "data.train_transform=eval", "data.batch_size=32", "data.samples_per_class=4", "train.epochs=2",
    "train.threads=1", "eval.clustering=false", "optim.warmup_steps=2",
]


def _data():
    from metricvision.data.emoji import load_emoji

    def first(samples, n):
        keep = sorted({s.label for s in samples})[:n]
        return [s for s in samples if s.label in keep]

    return relabel(first(load_emoji("train"), 96)), first(load_emoji("test"), 120)


def _recipe(loss: str):
    recipe = load_recipe("default", OVERRIDES + [f"loss.name={loss}"])
    recipe.loss.params = {}
    return recipe


def _worker(rank: int, world: int, loss: str, run_dir: str) -> None:
    from metricvision.engine.ray_train import DistributedTrainer

    train, test = _data()
    DistributedTrainer(_recipe(loss), run_dir, train, test).fit()


@pytest.mark.parametrize("loss", ["multi_similarity", pytest.param("proxy_anchor", marks=pytest.mark.slow)])
def test_two_process_training_matches_one_process(tmp_path: Path, loss: str) -> None:
    launch_local(_worker, 2, loss, str(tmp_path / "ddp"))
    got = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    train, test = _data()
    ref = Trainer(_recipe(loss), tmp_path / "single", train, test).fit()
    for key in ("recall@1", "map@r"):
        assert abs(got[key] - ref[key]) < 0.05, (key, got[key], ref[key])
    log = (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()
    assert sum('"event": "epoch"' in line for line in log) == 2  # rank 0 alone writes the log
    assert (tmp_path / "ddp" / "checkpoint.safetensors").exists()


@pytest.mark.slow
def test_ray_train_runs_ddp_workers_into_one_run_folder(tmp_path: Path, ray_local) -> None:
    from metricvision.engine.ray_train import ray_train

    recipe = _recipe("multi_similarity")
    recipe.train.epochs = 1
    metrics = ray_train(recipe, tmp_path / "run", num_workers=2, cpus_per_worker=0.5)
    assert metrics == json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["recall@1"] > 0.1
    assert (tmp_path / "run" / "checkpoint.safetensors").exists()


def _distill_recipe(teacher: str):
    return load_recipe("distill", OVERRIDES + [f"distill.teacher={teacher}", "distill.loss=embedding_distillation",
                                               "distill.params={}", "distill.weight=5.0", "model.pooling=avg",
                                               "distill.views=0"])


def _first_step_gradient(trainer: Trainer, batch: list) -> torch.Tensor:
    """The encoder's gradient of the loss (metric loss + the hooks' terms) on ``batch``, batch norm frozen."""
    trainer.model.eval()  # running statistics: the same on every rank
    trainer._call("on_fit_start")
    x = as_float_images(torch.stack([trainer.train_set[i][0] for i in batch]))
    y = torch.tensor([trainer.train_set[i][1] for i in batch])
    trainer.batch_indices = torch.tensor(batch)
    trainer.batch_loss(x, y).value.backward()
    return torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])


def _distill_worker(rank: int, world: int, teacher: str, out: str) -> None:
    from metricvision.engine.ray_train import DistributedTrainer

    train, test = _data()
    t = DistributedTrainer(_distill_recipe(teacher), Path(out) / "run", train, test)
    t.sampler.set_epoch(0)
    torch.save(_first_step_gradient(t, next(iter(t.local_batches(t.sampler)))), Path(out) / f"grad{rank}.pt")


def test_two_process_step_with_a_hooks_loss_term_has_the_single_process_gradient(tmp_path: Path) -> None:
    """A supervision with a loss term of its own (distillation's extra_loss) on 2 DDP processes: after DDP's
    averaging, every rank holds the gradient of one process on the whole global batch."""
    train, test = _data()
    teacher, recipe = tmp_path / "teacher", _recipe("multi_similarity")
    recipe.train.epochs = 1
    Trainer(recipe, teacher, train, test).fit()
    launch_local(_distill_worker, 2, str(teacher), str(tmp_path))
    single = Trainer(_distill_recipe(str(teacher)), tmp_path / "single", train, test)
    single.sampler.set_epoch(0)
    want = _first_step_gradient(single, next(iter(single.sampler)))
    for rank in range(2):
        torch.testing.assert_close(torch.load(tmp_path / f"grad{rank}.pt"), want, rtol=1e-4, atol=1e-6)

"""2-process DDP training (gathered loss, class-sharded batches) matches a 1-process run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from metricvision.config import load_recipe
from metricvision.data import relabel
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

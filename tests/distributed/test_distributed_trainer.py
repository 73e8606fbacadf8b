"""2-process DDP training (gathered loss, class-sharded batches) matches a 1-process run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from metricvision.config import load_recipe
from metricvision.data import relabel
from metricvision.data.transforms import as_float_images
from metricvision.engine.distributed import launch_local
from metricvision.engine.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from native_datasets import write_long_tail  # noqa: E402

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


def _oltr_trainer(cls: type, run_dir: Path) -> Trainer:
    """OLTR's meta-embedding loss with its memory set and centroids that learn (momentum), on the emoji subset."""
    recipe = _recipe("oltr_meta_embedding")
    recipe.loss.params = {"centroid_weight": 0.1, "repel_weight": 0.1, "centroid_lr": 0.5, "centroid_momentum": 0.9}
    train, test = _data()
    trainer = cls(recipe, run_dir, train, test)
    trainer.loss.set_centroids(torch.randn(trainer.loss.centroids.shape, generator=torch.Generator().manual_seed(0)))
    trainer.sampler.set_epoch(0)
    return trainer


def _oltr_worker(rank: int, world: int, out: str) -> None:
    from metricvision.engine.ray_train import DistributedTrainer

    t = _oltr_trainer(DistributedTrainer, Path(out) / "run")
    grad = _first_step_gradient(t, next(iter(t.local_batches(t.sampler))))
    torch.save({"grad": grad, "centroids": t.loss.centroids}, Path(out) / f"oltr{rank}.pt")


def test_two_process_oltr_step_has_the_single_process_gradient_and_centroids(tmp_path: Path) -> None:
    """OLTR's loss takes no references: under DDP every rank computes it on the whole gathered batch, so the encoder's
    gradient and the learned centroids' step equal one process's on the global batch, on every rank."""
    launch_local(_oltr_worker, 2, str(tmp_path))
    single = _oltr_trainer(Trainer, tmp_path / "single")
    want = _first_step_gradient(single, next(iter(single.sampler)))
    for rank in range(2):
        got = torch.load(tmp_path / f"oltr{rank}.pt")
        torch.testing.assert_close(got["grad"], want, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got["centroids"], single.loss.centroids, rtol=1e-4, atol=1e-6)


OLTR_TINY = ["model.backbone=small_cnn", "model.pretrained=false", "model.dim=16", "data.image_size=16", "data.num_workers=0",
             "data.batch_size=8", "data.samples_per_class=4", "train.epochs=2", "train.eval_every=0", "optim.warmup_steps=1",
             "train.threads=1", "eval.params.many=8", "eval.params.few=3", "supervision.params.samples_per_class=4",
             "supervision.params.plain_epochs=1", "loss.params.centroid_lr=0.1", "loss.params.centroid_momentum=0.9"]


def _oltr_recipe_worker(rank: int, world: int, root: str, out: str) -> None:
    from metricvision.engine.ray_train import DistributedTrainer

    trainer = DistributedTrainer(load_recipe("imagenet_lt_oltr", OLTR_TINY + [f"data.path={root}"]), out)
    trainer.fit()
    torch.save(trainer.loss.centroids, Path(out) / f"centroids{rank}.pt")


def test_oltr_recipe_trains_on_two_processes(tmp_path: Path) -> None:
    """Both of OLTR's stages on 2 DDP processes (the memory's parameters unused in the first): the ranks' learned
    centroids stay equal and rank 0 writes OLTR's metrics."""
    root = write_long_tail(tmp_path / "data", "ImageNet_LT", counts=(12, 8, 4, 2))
    launch_local(_oltr_recipe_worker, 2, str(root), str(tmp_path / "run"))
    assert torch.equal(torch.load(tmp_path / "run" / "centroids0.pt"), torch.load(tmp_path / "run" / "centroids1.pt"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 2 and 0 <= metrics["oltr_accuracy"] <= 1


def test_only_rank_0_writes_the_run_files(tmp_path: Path) -> None:
    """Two ranks writing metrics.json at once interleaved their bytes (a file ending in '}}', seen in CI): rank 0
    alone writes run files, whole (temporary name, then renamed)."""
    from metricvision.engine.ray_train import DistributedTrainer

    for rank in (1, 0):
        trainer = object.__new__(DistributedTrainer)  # the write only needs the rank and the run folder
        trainer.rank, trainer.run_dir = rank, tmp_path
        trainer._write_run_file("metrics.json", json.dumps({"rank": rank}))
        assert [p.name for p in tmp_path.iterdir()] == ([] if rank else ["metrics.json"])
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"rank": 0}

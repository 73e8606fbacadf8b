"""Training on several processes: ``DistributedTrainer`` (DDP, launched by torchrun or by
ray.train's TorchTrainer) and ``ray_train`` (the ray.train launcher).

Per step, every rank trains on whole classes of the global P x K batch
(``ShardedBatchSampler``), gathers the embeddings of all ranks and scores its rows
against them (``gathered_loss``); DDP averages the gradients, so a step equals a
single-process step on the global batch (up to batch-norm statistics, which stay per rank).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from metricvision.config import Recipe
from metricvision.data.distributed_sampler import ShardedBatchSampler
from metricvision.data.sample import Sample
from metricvision.engine.distributed import (
    all_gather,
    gathered_loss,
    get_rank,
    get_world_size,
    init_from_env,
    is_distributed,
)
from metricvision.engine.trainer import Trainer
from metricvision.losses import LossOutput


class DistributedTrainer(Trainer):
    """A Trainer that runs as one rank of a process group (plain Trainer when alone).

    Joins the group of torchrun's variables unless one exists (ray.train makes it). Only
    rank 0 writes checkpoints and the log; evaluation embeds 1/W of the test set per
    rank and gathers. Arguments as ``Trainer``, plus ``backend`` ("gloo" / "nccl").
    """

    def __init__(
        self,
        recipe: Recipe,
        run_dir: str | Path,
        train_samples: Optional[Sequence[Sample]] = None,
        test_samples: Optional[Sequence[Sample]] = None,
        hooks: Sequence[Any] = (),
        backend: Optional[str] = None,
    ) -> None:
        init_from_env(backend)
        self.rank, self.world = get_rank(), get_world_size()
        p = recipe.data.batch_size // recipe.data.samples_per_class
        if p % self.world:
            raise ValueError(
                f"data.batch_size / data.samples_per_class = {p} classes must split evenly over {self.world} processes"
            )
        super().__init__(recipe, run_dir, train_samples, test_samples, hooks)
        self.ddp_model: torch.nn.Module = self.model
        self.ddp_loss: torch.nn.Module = self.loss
        if is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=ids)
            if any(q.requires_grad for q in self.loss.parameters()):  # proxies: synced like the model
                # a loss may leave parameters unused for a while (OLTR's memory parts before its second stage)
                self.ddp_loss = DistributedDataParallel(self.loss, device_ids=ids, find_unused_parameters=True)

    def local_batches(self, batches: Any) -> Any:
        """This rank's whole classes of every global batch."""
        if not is_distributed():
            return batches
        return ShardedBatchSampler(batches, self.recipe.data.samples_per_class, self.world, self.rank)

    def train_model(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) embeddings of this rank's rows through the DDP wrapper (gradients averaged over ranks)."""
        return self.ddp_model(x)

    def metric_loss(self, z: torch.Tensor, y: torch.Tensor) -> LossOutput:
        """This rank's rows against the embeddings of the whole global batch.

        The hooks' ``extra_loss`` terms (a teacher, a previous model), added by ``batch_loss``, see this rank's
        rows only: a term that is a mean over samples (embedding distillation) averages over ranks to its
        single-process value; a term over pairs of the batch (rank or relational distillation) counts the
        pairs within a rank.
        """
        return gathered_loss(self.ddp_loss, z, y)

    @torch.no_grad()
    def embed(self, samples: Sequence[Sample], batch_size: int = 256) -> torch.Tensor:
        """(N, D) embeddings: each rank embeds every W-th sample, then all are gathered in order."""
        if not is_distributed():
            return super().embed(samples, batch_size)
        mine = np.arange(len(samples))[self.rank :: self.world]
        local = super().embed([samples[i] for i in mine], batch_size).to(self.device)
        order = all_gather(torch.as_tensor(mine, device=self.device))
        gathered = all_gather(local)
        out = torch.empty_like(gathered)
        out[order] = gathered
        return out.cpu()

    def save(self) -> None:
        """Checkpoint (rank 0 only; every rank holds the same weights)."""
        if self.rank == 0:
            super().save()
        if is_distributed():
            torch.distributed.barrier()

    def _log(self, entry: Dict[str, Any]) -> None:
        if self.rank == 0:
            super()._log(entry)

    def _write_run_file(self, name: str, text: str) -> None:
        """Rank 0 only: the ranks' metrics differ in their timings, and two writers of one file interleave."""
        if self.rank == 0:
            super()._write_run_file(name, text)


def _ray_train_loop(config: Dict[str, Any]) -> None:
    from metricvision.config import from_dict

    DistributedTrainer(from_dict(Recipe, config["recipe"]), config["run_dir"]).fit(resume=config["resume"])


def ray_train(
    recipe: Recipe,
    run_dir: str | Path,
    num_workers: int = 2,
    address: Optional[str] = None,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    resume: bool = False,
) -> Dict[str, float]:
    """Train ``recipe`` with ray.train's TorchTrainer on ``num_workers`` DDP workers.

    The run folder must be reachable from every worker (a shared file system on a
    cluster). CPU workers use gloo, GPU workers nccl.

    Returns:
        the final metrics, as rank 0 wrote them to ``run_dir/metrics.json``.
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from metricvision.engine.ray_embed import ensure_ray

    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    ensure_ray(address)
    run_dir = Path(run_dir).resolve()
    trainer = TorchTrainer(
        _ray_train_loop,
        train_loop_config={"recipe": recipe.to_dict(), "run_dir": str(run_dir), "resume": resume},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name="ray_train", storage_path=str(run_dir / "ray")),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    return json.loads((run_dir / "metrics.json").read_text())

"""The Trainer: one loop for every loss and supervision setting, resumable after a kill.

Each epoch replays exactly from (seed, epoch): the PK sampler and the augmentation RNG are
seeded per epoch, and a checkpoint (model, loss, optimizer, schedule, history) is written
atomically at the end of every epoch, so ``fit(resume=True)`` after a kill ends with the
same weights as an uninterrupted run.
"""
from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Sequence

import torch
import yaml
from tqdm import tqdm

from metricvision.config import Recipe
from metricvision.data.samplers import PKSampler
from metricvision.data.sample import Sample, SampleDataset
from metricvision.data.transforms import TRANSFORMS
from metricvision.engine.builders import build_loss, build_model, build_optimizer, build_schedule, build_splits
from metricvision.engine.checkpoint import load_checkpoint, save_checkpoint
from metricvision.losses import LossOutput
from metricvision.metrics import evaluate_retrieval

CHECKPOINT = "checkpoint.safetensors"


class Hook(Protocol):
    """Optional callbacks; a supervision setting implements the ones it needs.

    on_fit_start(trainer); on_epoch_start(trainer, epoch);
    targets(trainer, indices (B,), labels (B,)) -> labels (B,) used by the loss;
    batch_sampler(trainer, epoch) -> the epoch's batches of dataset indices (default: PK on labels);
    on_epoch_end(trainer, epoch, record).
    """


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, base: SampleDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return x, y, i


class Trainer:
    """Trains an Embedder with a loss over similarity matrices and evaluates it on unseen classes.

    Args:
        recipe: the experiment.
        run_dir: the run folder (created).
        train_samples / test_samples: override the recipe's dataset (labels of train must be 0..C-1).
        hooks: supervision settings and other callbacks (see ``Hook``).
    """

    def __init__(
        self,
        recipe: Recipe,
        run_dir: str | Path,
        train_samples: Optional[Sequence[Sample]] = None,
        test_samples: Optional[Sequence[Sample]] = None,
        hooks: Sequence[Any] = (),
    ) -> None:
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if recipe.train.threads > 0:
            torch.set_num_threads(recipe.train.threads)
        dev = recipe.train.device
        self.device = torch.device("cuda" if dev == "auto" and torch.cuda.is_available() else ("cpu" if dev == "auto" else dev))
        torch.manual_seed(recipe.train.seed)
        if train_samples is None or test_samples is None:
            train_samples, test_samples = build_splits(recipe)
        self.train_samples, self.test_samples = list(train_samples), list(test_samples)
        self.num_classes = len({s.label for s in self.train_samples if s.label >= 0})
        self.model = build_model(recipe).to(self.device)
        self.loss = build_loss(recipe, self.num_classes, self.model.dim).to(self.device)
        self.hooks = list(hooks)
        self.hooks += self._supervision_hooks()
        if recipe.train.tensorboard:
            from metricvision.engine.tensorboard import TensorBoardLogger

            self.hooks.append(TensorBoardLogger(self.run_dir / "tensorboard"))
        size = recipe.data.image_size
        self.train_set = SampleDataset(self.train_samples, TRANSFORMS.create(recipe.data.train_transform, size=size))
        self.eval_transform = TRANSFORMS.create("eval", size=size)
        labels = [s.label for s in self.train_samples]
        self.sampler = PKSampler(labels, recipe.data.batch_size, recipe.data.samples_per_class, recipe.train.seed)
        self.optimizer = build_optimizer(recipe, self.model, self.loss)
        self.total_steps = recipe.train.epochs * len(self.sampler)
        self.scheduler = build_schedule(self.optimizer, recipe.optim.warmup_steps, self.total_steps)
        self.history: Dict[str, List[Any]] = {"step_loss": [], "epochs": []}
        self.epoch = 0

    def _supervision_hooks(self) -> List[Any]:
        sup = self.recipe.supervision
        if sup.name == "supervised":
            return []
        from metricvision.supervision import SUPERVISIONS

        return [SUPERVISIONS.create(sup.name, **sup.params)]

    def _call(self, name: str, *args: Any) -> None:
        for h in self.hooks:
            fn = getattr(h, name, None)
            if fn is not None:
                fn(self, *args)

    # ---- state -------------------------------------------------------------------------
    def _modules(self) -> Dict[str, torch.nn.Module]:
        return {"model": self.model, "loss": self.loss}

    def save(self) -> None:
        """Checkpoint the end of epoch ``self.epoch`` (atomic)."""
        info = {"epoch": self.epoch, "scheduler": self.scheduler.state_dict(), "history": self.history,
                "recipe": self.recipe.to_dict(), "num_classes": self.num_classes}
        save_checkpoint(self.run_dir / CHECKPOINT, self._modules(), self.optimizer, info)

    def restore(self) -> bool:
        """Load the run folder's checkpoint if there is one; returns whether it did."""
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            return False
        info = load_checkpoint(path, self._modules(), self.optimizer)
        self.scheduler.load_state_dict(info["scheduler"])
        self.history, self.epoch = info["history"], int(info["epoch"])
        return True

    # ---- loop --------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> Dict[str, float]:
        """Train the remaining epochs, then evaluate; returns the final metrics."""
        r = self.recipe
        (self.run_dir / "recipe.yaml").write_text(yaml.safe_dump(r.to_dict(), sort_keys=False))
        if resume and self.restore():
            self._log({"event": "resume", "epoch": self.epoch})
        start = time.time()
        self._call("on_fit_start")
        while self.epoch < r.train.epochs:
            if r.train.max_minutes and (time.time() - start) / 60 > r.train.max_minutes:
                self._log({"event": "time_limit", "epoch": self.epoch})
                break
            record = self.train_epoch(self.epoch)
            self.epoch += 1
            if r.train.eval_every and self.epoch % r.train.eval_every == 0 and self.epoch < r.train.epochs:
                record.update({f"test_{k}": v for k, v in self.evaluate(clustering=False).items()})
            self.history["epochs"].append(record)
            self._call("on_epoch_end", self.epoch, record)
            self._log({"event": "epoch", **record})
            self.save()
        metrics = self.evaluate()
        metrics["train_minutes"] = (time.time() - start) / 60
        metrics["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        self._log({"event": "final", **metrics})
        return metrics

    def train_epoch(self, epoch: int) -> Dict[str, float]:
        """One epoch of PK batches; returns the epoch record (mean loss, lr, seconds)."""
        self.model.train()
        self.sampler.set_epoch(epoch)
        torch.manual_seed(self.recipe.train.seed * 100003 + epoch)
        self._call("on_epoch_start", epoch)
        sampler = self.sampler
        for h in self.hooks:  # a supervision setting may draw its own batches (pseudo-labels, tuples)
            if hasattr(h, "batch_sampler"):
                sampler = h.batch_sampler(self, epoch)
        loader = torch.utils.data.DataLoader(_Indexed(self.train_set), batch_sampler=self.local_batches(sampler),
                                             num_workers=self.recipe.data.num_workers)
        losses, t0 = [], time.time()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.recipe.train.epochs}", leave=False, dynamic_ncols=True)
        for x, y, idx in bar:
            x, y = x.to(self.device), y.to(self.device)
            for h in self.hooks:
                if hasattr(h, "targets"):
                    y = h.targets(self, idx, y).to(self.device)
            out = self.batch_loss(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            out.value.backward()
            if self.recipe.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.optim.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            losses.append(float(out.value.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        self.history["step_loss"] += losses
        return {"epoch": epoch + 1, "loss": sum(losses) / max(1, len(losses)),
                "lr": self.optimizer.param_groups[0]["lr"], "seconds": time.time() - t0}

    def local_batches(self, batches: Any) -> Any:
        """The batches this process trains on (all of them; DistributedTrainer keeps its rank's share)."""
        return batches

    def batch_loss(self, x: torch.Tensor, y: torch.Tensor) -> LossOutput:
        """Loss of one batch (DistributedTrainer scores it against the whole gathered batch)."""
        return self.loss(self.model(x), y)

    # ---- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, samples: Sequence[Sample], batch_size: int = 256) -> torch.Tensor:
        """(N, D) embeddings of samples with the eval transform."""
        loader = torch.utils.data.DataLoader(SampleDataset(samples, self.eval_transform), batch_size=batch_size,
                                             num_workers=self.recipe.data.num_workers)
        return self.model.encode((x for x, _ in tqdm(loader, desc="embedding the test set", leave=False, dynamic_ncols=True)))

    def evaluate(self, clustering: Optional[bool] = None) -> Dict[str, float]:
        """Retrieval metrics on the test (unseen) classes."""
        emb = self.embed(self.test_samples)
        self.last_test_embeddings = emb
        labels = torch.tensor([s.label for s in self.test_samples])
        use_clustering = self.recipe.eval.clustering if clustering is None else clustering
        return evaluate_retrieval(emb, labels, ks=self.recipe.eval.ks, clustering=use_clustering, seed=self.recipe.train.seed)

    def _log(self, entry: Dict[str, Any]) -> None:
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps({"time": time.time(), **entry}) + "\n")

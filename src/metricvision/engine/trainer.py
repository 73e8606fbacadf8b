"""The Trainer: one loop for every loss and supervision setting, resumable after a kill.

Each epoch replays exactly from (seed, epoch): the PK sampler and the augmentation RNG are
seeded per epoch, and a checkpoint (model, loss, optimizer, schedule, history) is written
atomically at the end of every epoch, so ``fit(resume=True)`` after a kill ends with the
same weights as an uninterrupted run.
"""
from __future__ import annotations

import json
import math
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Sequence

import torch
import yaml
from tqdm import tqdm

from metricvision.config import Recipe
from metricvision.data.sample import Sample, SampleDataset
from metricvision.data.transforms import TRANSFORMS, as_float_images
from metricvision._atomic import atomic_write
from metricvision.engine.averaging import ModelAverage
from metricvision.engine.builders import (build_loss, build_model, build_optimizer, build_sampler, build_schedule, build_splits,
                                          eval_recipes, resolve_eval, run_evaluations)
from metricvision.engine.checkpoint import load_checkpoint, save_checkpoint
from metricvision.index.whitening import WHITENING_FILE, WHITENINGS, fit_whitening, save_whitening
from metricvision.losses import LossOutput

CHECKPOINT = "checkpoint.safetensors"


class NonFiniteError(ValueError):
    """Training produced a non-finite loss, gradient or weight; the last good checkpoint is kept."""


class Hook(Protocol):
    """Optional callbacks; a supervision setting implements the ones it needs.

    setup(trainer): once the model and loss exist, before the optimizer; a hook that is an nn.Module
        may create its parameters here (they train at optim.loss_lr and are checkpointed);
    on_fit_start(trainer); on_epoch_start(trainer, epoch);
    targets(trainer, indices (B,), labels (B,)) -> labels (B,) used by the loss;
    batch_sampler(trainer, epoch) -> the epoch's batches of dataset indices (default: PK on labels);
    extra_loss(trainer, indices (B,), embeddings (B, D)) -> LossOutput added to the loss (a teacher,
        a previous model); on_step_end(trainer): after each optimizer step; on_epoch_end(trainer, epoch, record);
    on_fit_end(trainer, metrics): may add entries to the final metrics before metrics.json is written;
    checkpoint_state() -> {name: tensor}: the hook's own state (a memory, a teacher), saved with every checkpoint;
    restore_state(state): given that state back by ``restore`` (before on_fit_start), {} from a checkpoint without it.
    """


class _HookState:
    """A hook's checkpoint_state / restore_state seen by the checkpoint as a module's state_dict / load_state_dict."""

    def __init__(self, hook: Any) -> None:
        self.hook = hook

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.hook.checkpoint_state()

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.hook.restore_state(state)


AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``train.amp`` ("none", "bf16", "fp16"); fp16 (with a gradient scaler) needs CUDA."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"train.amp must be one of {tuple(AMP_DTYPES)}, got '{amp}'")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"train.amp=fp16 needs a CUDA device, got {device}; use bf16 on CPU")
    return AMP_DTYPES[amp]


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, base: SampleDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return x, y, i

    def __getitems__(self, indices: Sequence[int]):
        return [(x, y, i) for (x, y), i in zip(self.base.__getitems__(indices), indices)]


class Trainer:
    """Trains an Embedder with a loss over similarity matrices on a dataset's training split and
    evaluates it with the evaluation dataset's protocol (``eval.protocol``, through PROTOCOLS).

    Args:
        recipe: the experiment (its eval section is resolved by ``resolve_eval``).
        run_dir: the run folder (created); splits.json records the classes of every split used.
        train_samples / test_samples: override the recipe's datasets (labels of train must be
            0..C-1); the protocol then runs on {"test": test_samples}.
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
        self.recipe = recipe = resolve_eval(recipe)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if recipe.train.threads > 0:
            torch.set_num_threads(recipe.train.threads)
        dev = recipe.train.device
        self.device = torch.device("cuda" if dev == "auto" and torch.cuda.is_available() else ("cpu" if dev == "auto" else dev))
        torch.manual_seed(recipe.train.seed)
        self.eval_recipes = eval_recipes(recipe)
        if train_samples is None or test_samples is None:
            train_samples, self.eval_splits, record = build_splits(recipe)
            with atomic_write(self.run_dir / "splits.json") as f:
                f.write(json.dumps(record, indent=1).encode())
        else:
            self.eval_recipes = {"": self.eval_recipes[""]}
            self.eval_splits = {"": {"test": list(test_samples)}}
        self.train_samples = list(train_samples)
        # the labelled split of the main evaluation that the report's query grid shows; evaluate() keeps its embeddings
        labelled = [self.eval_splits[""].get(n, []) for n in ("test", "gallery")]
        self.test_samples = next((p for p in labelled if any(s.label >= 0 for s in p)), [])
        self.last_test_embeddings: Optional[torch.Tensor] = None
        self.num_classes = len({s.label for s in self.train_samples if s.label >= 0})
        self.model = build_model(recipe).to(self.device)
        self.loss = build_loss(recipe, self.num_classes, self.model.dim).to(self.device)
        self.hooks = list(hooks)
        self.hooks += self._supervision_hooks()
        if recipe.train.ema:
            self.hooks.append(ModelAverage(recipe.train.ema))
        if recipe.train.tensorboard:
            from metricvision.engine.tensorboard import TensorBoardLogger

            self.hooks.append(TensorBoardLogger(self.run_dir / "tensorboard"))
        self._call("setup")
        d, size = recipe.data, recipe.data.image_size
        self.train_set = SampleDataset(self.train_samples, TRANSFORMS.create(d.train_transform, size=size, **d.train_transform_params),
                                      crop=d.crop)
        self.eval_transform = TRANSFORMS.create("eval", size=size)
        self.sampler = build_sampler(recipe, self.train_samples)
        self.amp_dtype = amp_dtype(recipe.train.amp, self.device)
        if recipe.eval.whitening not in WHITENINGS:
            raise ValueError(f"eval.whitening must be one of {WHITENINGS}, got '{recipe.eval.whitening}'")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.optimizer = build_optimizer(recipe, self.model, self.loss)
        own = [p for h in self.hooks if isinstance(h, torch.nn.Module) for p in h.to(self.device).parameters() if p.requires_grad]
        if own:
            self.optimizer.add_param_group({"params": own, "lr": recipe.optim.loss_lr, "weight_decay": 0.0})
        self.total_steps = recipe.train.epochs * len(self.sampler)
        self.scheduler = build_schedule(self.optimizer, recipe.optim.warmup_steps, self.total_steps)
        self.history: Dict[str, List[Any]] = {"step_loss": [], "epochs": [], "warnings": []}
        self.epoch = 0
        self.batch_indices = torch.empty(0, dtype=torch.int64)  # dataset indices of the batch being trained

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
    def _modules(self) -> Dict[str, Any]:
        hooks = {f"hook_{type(h).__name__}": h for h in self.hooks if isinstance(h, torch.nn.Module)}
        states = {f"state_{type(h).__name__}": _HookState(h) for h in self.hooks if hasattr(h, "checkpoint_state")}
        return {"model": self.model, "loss": self.loss, **hooks, **states}

    def save(self) -> None:
        """Checkpoint the end of epoch ``self.epoch`` (atomic); never replaces a good one with non-finite weights."""
        bad = [f"{m}.{n}" for m, mod in self._modules().items() for n, t in mod.state_dict().items()
               if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            raise NonFiniteError(f"{len(bad)} weight tensors are non-finite after epoch {self.epoch} (e.g. {bad[0]}); "
                                 f"not saved: {self._kept()}; lower optim.lr or set optim.grad_clip")
        info = {"epoch": self.epoch, "scheduler": self.scheduler.state_dict(), "history": self.history,
                "recipe": self.recipe.to_dict(), "num_classes": self.num_classes}
        save_checkpoint(self.run_dir / CHECKPOINT, self._modules(), self.optimizer, info)

    def _kept(self) -> str:
        path = self.run_dir / CHECKPOINT
        return f"the last good checkpoint {path} is kept" if path.exists() else "no checkpoint was written yet"

    def restore(self) -> bool:
        """Load the run folder's checkpoint if there is one; returns whether it did."""
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            return False
        info = load_checkpoint(path, self._modules(), self.optimizer)
        self.scheduler.load_state_dict(info["scheduler"])
        self.history, self.epoch = info["history"], int(info["epoch"])
        self.history.setdefault("warnings", [])
        return True

    # ---- loop --------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> Dict[str, float]:
        """Train the remaining epochs, then evaluate; returns the final metrics.

        Raises:
            NonFiniteError: a non-finite loss or gradient with ``train.nonfinite: stop`` (the
                default), or weights that became non-finite; the last good checkpoint is kept.
        """
        r = self.recipe
        self._write_run_file("recipe.yaml", yaml.safe_dump(r.to_dict(), sort_keys=False))
        if resume and self.restore():
            self._log({"event": "resume", "epoch": self.epoch})
        start, start_epoch = time.time(), self.epoch
        self._call("on_fit_start")
        while self.epoch < self.planned_epochs():
            record = self.train_epoch(self.epoch)
            self.epoch += 1
            if r.train.eval_every and self.epoch % r.train.eval_every == 0 and self.epoch < r.train.epochs:
                record.update({f"test_{k}": v for k, v in self.evaluate(clustering=False).items()})
            self.history["epochs"].append(record)
            self._call("on_epoch_end", self.epoch, record)
            self._log({"event": "epoch", **record})
            if r.train.max_minutes:
                self._apply_time_limit((time.time() - start) / (self.epoch - start_epoch), time.time() - start)
            self.save()
        if self.epoch < r.train.epochs:
            self._warn(f"stopped at epoch {self.epoch}/{r.train.epochs} by train.max_minutes={r.train.max_minutes:g}")
        metrics: Dict[str, Any] = dict(self.evaluate())
        self._call("on_fit_end", metrics)
        metrics["train_minutes"] = (time.time() - start) / 60
        metrics["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        metrics["epochs_trained"] = self.epoch
        if self.history["warnings"]:
            metrics["warnings"] = list(self.history["warnings"])
        self._write_run_file("metrics.json", json.dumps(metrics, indent=2))
        self._log({"event": "final", **metrics})
        return metrics

    def planned_epochs(self) -> int:
        """Epochs the schedule runs to: ``train.epochs``, fewer once a time limit shortened it."""
        return math.ceil(self.scheduler.lr_lambdas[0].total / max(1, len(self.sampler)))

    def _apply_time_limit(self, epoch_seconds: float, elapsed: float) -> None:
        """Shorten the schedule to the epochs that fit in ``train.max_minutes``, so the LR still decays to 0.

        Which epoch a run stops at depends on the machine's speed and load: the warning says so, and
        metrics.json / report.html carry it.
        """
        r = self.recipe.train
        fit = self.epoch + int(max(0.0, r.max_minutes * 60 - elapsed) // epoch_seconds)
        if fit >= self.planned_epochs():
            return
        self.scheduler.lr_lambdas[0].total = fit * len(self.sampler)
        self._warn(f"train.max_minutes={r.max_minutes:g}: {epoch_seconds:.0f} s per epoch, schedule shortened "
                   f"to {fit}/{r.epochs} epochs (the result depends on this machine's speed and load)")

    def _warn(self, message: str) -> None:
        """A warning line on stderr, kept in the history (checkpoint) and metrics.json."""
        tqdm.write(f"warning: {message}", file=sys.stderr)
        self.history["warnings"].append(message)
        self._log({"event": "warning", "message": message})

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
                if len(sampler) != len(self.sampler):  # the learning-rate schedule counts len(self.sampler) an epoch
                    warnings.warn(f"{type(h).__name__} drew {len(sampler)} batches for epoch {epoch + 1}; the schedule "
                                  f"counts {len(self.sampler)} an epoch, so its warm-up and decay will not end as planned")
        loader = torch.utils.data.DataLoader(_Indexed(self.train_set), batch_sampler=self.local_batches(sampler),
                                             num_workers=self.recipe.data.num_workers)
        losses, t0, skipped = [], time.time(), 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.recipe.train.epochs}", leave=False, dynamic_ncols=True)
        for step, (x, y, idx) in enumerate(bar):
            x, y = as_float_images(x.to(self.device)), y.to(self.device)
            self.batch_indices = idx
            for h in self.hooks:
                if hasattr(h, "targets"):
                    y = h.targets(self, idx, y).to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                out = self.batch_loss(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(out.value).backward()
            self.scaler.unscale_(self.optimizer)
            bad = self._nonfinite_step(out.value.detach())
            if bad:
                if self.recipe.train.nonfinite == "stop":
                    raise NonFiniteError(
                        f"non-finite {bad} at epoch {epoch + 1} step {step + 1} (lr {self.optimizer.param_groups[0]['lr']:.3g}); "
                        f"training stopped, {self._kept()}; lower optim.lr / set optim.grad_clip, or set train.nonfinite=skip to skip such steps")
                skipped += 1
                self.optimizer.zero_grad(set_to_none=True)
            else:
                self.scaler.step(self.optimizer)
                losses.append(float(out.value.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            self.scaler.update()
            self.scheduler.step()
            self._call("on_step_end")
        if skipped:
            self._warn(f"epoch {epoch + 1}: skipped {skipped} step(s) with a non-finite loss or gradient (train.nonfinite=skip)")
        self.history["step_loss"] += losses
        return {"epoch": epoch + 1, "loss": sum(losses) / max(1, len(losses)),
                "lr": self.optimizer.param_groups[0]["lr"], "seconds": time.time() - t0}

    def _nonfinite_step(self, loss: torch.Tensor) -> str:
        """"loss" or "gradients" when either is non-finite (gradients clipped to optim.grad_clip first), else ""."""
        if not bool(torch.isfinite(loss)):
            return "loss"
        clip = self.recipe.optim.grad_clip
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        # fp16: the gradient scaler skips overflowing steps itself and lowers its scale
        return "" if bool(torch.isfinite(norm)) or self.scaler.is_enabled() else "gradients"

    def local_batches(self, batches: Any) -> Any:
        """The batches this process trains on (all of them; DistributedTrainer keeps its rank's share)."""
        return batches

    def batch_loss(self, x: torch.Tensor, y: torch.Tensor) -> LossOutput:
        """Loss of one batch: the metric loss plus the hooks' terms on the (B, D) embeddings.

        Under mixed precision the model runs in the autocast dtype and the loss in float32.
        """
        z = self.train_model(x)
        with torch.autocast(self.device.type, enabled=False):
            return self.hook_losses(self.metric_loss(z.float(), y), z.float())

    def train_model(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) training embeddings of a batch (DistributedTrainer: through its DDP wrapper)."""
        return self.model(x)

    def metric_loss(self, z: torch.Tensor, y: torch.Tensor) -> LossOutput:
        """The recipe's loss of the batch (DistributedTrainer scores it against the whole gathered batch)."""
        return self.loss(z, y)

    def hook_losses(self, out: LossOutput, z: torch.Tensor) -> LossOutput:
        """``out`` plus every hook's ``extra_loss`` on the (B, D) embeddings of the current batch."""
        for h in self.hooks:
            if hasattr(h, "extra_loss"):
                extra = h.extra_loss(self, self.batch_indices, z)
                out = LossOutput(out.value + extra.value, {**out.logs, **extra.logs})
        return out

    # ---- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, samples: Sequence[Sample], batch_size: int = 256, desc: str = "embedding the test set") -> torch.Tensor:
        """(N, D) embeddings of samples with the eval transform."""
        loader = torch.utils.data.DataLoader(SampleDataset(samples, self.eval_transform), batch_size=batch_size,
                                             num_workers=self.recipe.data.num_workers)
        return self.model.encode((x for x, _ in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)),
                                 scales=self.recipe.eval.scales)

    def evaluate(self, clustering: Optional[bool] = None) -> Dict[str, float]:
        """The eval protocol's metrics on the evaluation splits, then eval.also's as "name/metric"
        (clustering: override eval.clustering)."""
        keep = {id(s) for s in self.test_samples}
        kept: Dict[int, torch.Tensor] = {}
        e = self.recipe.eval
        whiten = None
        if e.whitening != "none":
            whiten = fit_whitening(e.whitening, self.embed(self.train_samples, desc="embedding the training set"), [s.label for s in self.train_samples])
            save_whitening(whiten, self.run_dir / WHITENING_FILE)  # `metricvision embed RUN` applies it

        def embed_fn(samples: List[Sample]) -> torch.Tensor:
            emb = self.embed(samples) if whiten is None else whiten.transform(self.embed(samples))
            kept.update((id(s), e) for s, e in zip(samples, emb) if id(s) in keep)
            return emb

        metrics = run_evaluations(self.eval_recipes, embed_fn, self.eval_splits, clustering)
        if keep and len(kept) == len(keep):
            self.last_test_embeddings = torch.stack([kept[id(s)] for s in self.test_samples])
        return metrics

    def _write_run_file(self, name: str, text: str) -> None:
        """Write ``run_dir/name`` whole or not at all (temporary name, then renamed)."""
        with atomic_write(self.run_dir / name) as f:
            f.write(text.encode())

    def _log(self, entry: Dict[str, Any]) -> None:
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps({"time": time.time(), **entry}) + "\n")

"""Class-incremental learning as metric learning, through the Trainer.

The training classes arrive in tasks (``recipe.incremental``: tasks x epochs_per_task epochs).
During task t the embedding network learns with the recipe's metric loss on the new classes and
the exemplar memory (herding, fixed budget, ``ExemplarMemory``), plus a distillation loss
(``losses/distillation.py``: embedding relations (rkd_distance / rkd_angle), similarity (kd) or
rank (rank_distillation)) towards its own embeddings at the end of task t - 1, computed once per
task on the training images (eval transform) and cached. After each task it classifies held-out
images of every seen class two ways: by the nearest mean of exemplars (iCaRL's NME) and by the
nearest class mean kept from the end of each class's task and moved by semantic drift
compensation (SDC, Yu et al., CVPR 2020): the drift of an old mean is the Gaussian-weighted
average of the drifts (new minus old embedding) of the current task's training samples.

A fraction ``test_fraction`` of every class's training samples is held out for this per-task
evaluation (never trained on); the recipe's own protocol still runs at the end. An epoch of a task
draws as many P x K batches as the Trainer's epoch over the whole training set (so the LR schedule
is unchanged), classes uniformly among the task's new classes and those of the memory.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from metricvision.losses import LOSSES, LossOutput
from metricvision.metrics import incremental_scores
from metricvision.metrics.classify import class_means, ncm_scores
from metricvision.supervision.base import SUPERVISIONS, epoch_generator, weighted_pk_batches
from metricvision.supervision.incremental import ExemplarMemory, class_incremental_tasks


def drift_compensation(means: torch.Tensor, old: torch.Tensor, new: torch.Tensor, sigma: float) -> torch.Tensor:
    """SDC (Yu et al., CVPR 2020): move (C, D) class means by the weighted drift of (n, D) samples.

    delta_c = sum_i w_ic (new_i - old_i) / sum_i w_ic with w_ic = exp(-||old_i - mu_c||^2 / (2 sigma^2)).
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    w = torch.exp(-torch.cdist(means, old) ** 2 / (2 * sigma**2))  # (C, n)
    return means + (w @ (new - old)) / w.sum(1, keepdim=True).clamp_min(1e-12)


def held_out(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """(N,) bool mask of round(fraction * n_c) samples of each class (none of a class with one sample)."""
    if not 0 < fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == c)
        n = min(len(idx) - 1, int(round(fraction * len(idx))))
        mask[rng.permutation(idx)[:n]] = True
    return mask


@SUPERVISIONS.register("incremental_metric")
class IncrementalMetric:
    """Hook training the recipe's metric loss task by task, with herding, self-distillation, NME and SDC.

    Args:
        test_fraction: fraction of each class's training samples held out for the per-task accuracy.
        seed: seed of the held-out choice.

    Attributes (after ``on_fit_start``):
        tasks_: the classes of each task.
        accuracy_: {"nme": (T, T), "sdc": (T, T)} accuracy on task j's held-out samples after task t.
    """

    def __init__(self, test_fraction: float = 1 / 3, seed: int = 0) -> None:
        self.test_fraction, self.seed = test_fraction, seed
        self.memory_: Optional[ExemplarMemory] = None
        self.previous_: Optional[torch.Tensor] = None  # (N, D) embeddings at the end of the previous task
        self.means_: Dict[int, torch.Tensor] = {}  # SDC-compensated class means (unnormalized)
        self.restored_: Dict[str, torch.Tensor] = {}  # checkpoint_state of a resumed run, applied in on_fit_start

    def on_fit_start(self, trainer: Any) -> None:
        """Split the classes into tasks and hold out the per-task test samples (and restore a resumed run's state)."""
        c, r = trainer.recipe.incremental, trainer.recipe
        if trainer.epoch > 0 and not self.restored_:
            raise ValueError(f"supervision '{r.supervision.name}' cannot resume (at epoch {trainer.epoch}): its exemplar "
                             "memory, class means and task accuracies are not in the checkpoint (written by an older "
                             "version); start the run again")
        if r.train.epochs != c.tasks * c.epochs_per_task:
            raise ValueError(f"train.epochs must be incremental.tasks x incremental.epochs_per_task = "
                             f"{c.tasks * c.epochs_per_task}, got {r.train.epochs}")
        self.config = c
        self.labels_ = np.array([s.label for s in trainer.train_samples])
        self.tasks_ = class_incremental_tasks(self.labels_, c.tasks, c.class_seed)
        self.test_ = held_out(self.labels_, self.test_fraction, self.seed)
        self.distill_ = None if c.distill == "none" else LOSSES.create(c.distill, **c.distill_params).to(trainer.device)
        self.memory_ = ExemplarMemory(c.memory)
        self.accuracy_ = {k: np.full((c.tasks, c.tasks), np.nan) for k in ("nme", "sdc")}
        self.seen_: Dict[str, List[float]] = {"nme": [], "sdc": []}
        if trainer.epoch > 0:
            self._restore(self.restored_)

    def checkpoint_state(self) -> Dict[str, torch.Tensor]:
        """Exemplars (herding order), class means, the previous task's (N, D) embeddings, per-task accuracies."""
        state: Dict[str, torch.Tensor] = {}
        if self.memory_ is None:
            return state
        for k in ("nme", "sdc"):  # NaN (not measured yet) as -1: checkpoints refuse non-finite tensors
            state[f"accuracy_{k}"] = torch.from_numpy(np.nan_to_num(self.accuracy_[k], nan=-1.0))
            state[f"seen_{k}"] = torch.tensor(self.seen_[k], dtype=torch.float64)
        ex = self.memory_.exemplars_
        if ex:
            state["memory_classes"] = torch.tensor(list(ex))
            state["memory_sizes"] = torch.tensor([len(v) for v in ex.values()])
            state["memory_indices"] = self.memory_.indices()
        if self.means_:
            state["means_classes"] = torch.tensor(list(self.means_))
            state["means"] = torch.stack(list(self.means_.values()))
        if self.previous_ is not None:
            state["previous"] = self.previous_
        return state

    def restore_state(self, state: Dict[str, torch.Tensor]) -> None:
        """Keep a checkpoint's state until ``on_fit_start`` has built the tasks."""
        self.restored_ = dict(state)

    def _restore(self, state: Dict[str, torch.Tensor]) -> None:
        for k in ("nme", "sdc"):
            acc = state[f"accuracy_{k}"].numpy().copy()
            self.accuracy_[k] = np.where(acc < 0, np.nan, acc)
            self.seen_[k] = state[f"seen_{k}"].tolist()
        if "memory_classes" in state:
            parts = state["memory_indices"].split(state["memory_sizes"].tolist())
            self.memory_.exemplars_ = dict(zip(state["memory_classes"].tolist(), parts))
        if "means_classes" in state:
            self.means_ = dict(zip(state["means_classes"].tolist(), state["means"]))
        self.previous_ = state.get("previous")

    def task(self, epoch: int) -> int:
        """The task trained in ``epoch`` (0-based)."""
        return epoch // self.config.epochs_per_task

    def batch_sampler(self, trainer: Any, epoch: int) -> List[List[int]]:
        """P x K batches over the current task's training samples and the exemplar memory."""
        new = np.isin(self.labels_, self.tasks_[self.task(epoch)]) & ~self.test_
        new[self.memory_.indices().numpy()] = True
        d = trainer.recipe.data
        return weighted_pk_batches(torch.from_numpy(self.labels_), torch.from_numpy(new).float(), d.batch_size,
                                   d.samples_per_class, len(trainer.sampler), epoch_generator(trainer, epoch))

    def extra_loss(self, trainer: Any, indices: torch.Tensor, embeddings: torch.Tensor) -> LossOutput:
        """``distill_weight`` x the distillation loss towards the previous task's embeddings (0 in task 1)."""
        if self.previous_ is None or self.distill_ is None:
            return LossOutput(embeddings.sum() * 0.0)
        out = self.distill_(embeddings, self.previous_[indices.cpu()].to(embeddings.device))
        return LossOutput(self.config.distill_weight * out.value, {"self_distill": float(out.value.detach())})

    def on_epoch_end(self, trainer: Any, epoch: int, record: Dict[str, float]) -> None:
        """At the end of a task: SDC of the old means, herding, per-task accuracies."""
        if epoch % self.config.epochs_per_task:
            return
        t = epoch // self.config.epochs_per_task - 1
        emb = trainer.embed(trainer.train_samples).float()
        current = np.isin(self.labels_, self.tasks_[t]) & ~self.test_
        if self.previous_ is not None and self.config.drift_compensation and self.means_:
            old = list(self.means_)
            moved = drift_compensation(torch.stack([self.means_[k] for k in old]), self.previous_[current],
                                       emb[current], self.config.sigma)
            self.means_.update(zip(old, moved))
        for k in self.tasks_[t].tolist():
            self.means_[k] = emb[(self.labels_ == k) & ~self.test_].mean(0)
        rows = torch.from_numpy(np.flatnonzero(current))
        self.memory_.update(emb[rows], torch.from_numpy(self.labels_[rows.numpy()]), rows)
        self._score(t, emb)
        self.previous_ = emb
        trainer._log({"event": "supervision", "task": t + 1, "exemplars": len(self.memory_),
                      **{f"seen_accuracy_{k}": v[-1] for k, v in self.seen_.items()}})

    def _score(self, t: int, emb: torch.Tensor) -> None:
        seen = np.concatenate(self.tasks_[: t + 1])
        ex = self.memory_.indices().numpy()
        nme_classes, nme_means = class_means(emb[ex], self.labels_[ex])
        sdc_classes = np.array(sorted(self.means_))
        sdc_means = F.normalize(torch.stack([self.means_[k] for k in sdc_classes]), dim=1)
        test = np.flatnonzero(self.test_ & np.isin(self.labels_, seen))
        for name, classes, means in (("nme", nme_classes, nme_means), ("sdc", sdc_classes, sdc_means)):
            pred = classes[ncm_scores(emb[test], means).argmax(1).numpy()]
            right = pred == self.labels_[test]
            self.seen_[name].append(float(right.mean()))
            for j in range(t + 1):
                self.accuracy_[name][t, j] = float(right[np.isin(self.labels_[test], self.tasks_[j])].mean())

    def on_fit_end(self, trainer: Any, metrics: Dict[str, Any]) -> None:
        """Adds the NME and SDC incremental scores and their (T, T) task accuracy matrices to the metrics."""
        done = len(self.seen_["nme"])
        if not done:
            return
        for name in ("nme", "sdc"):
            acc = self.accuracy_[name][:done, :done]
            metrics.update({f"incremental_{name}_{k}": v for k, v in incremental_scores(acc, self.seen_[name]).items()})
            metrics[f"incremental_{name}_task_accuracy"] = [[None if np.isnan(v) else v for v in row] for row in acc.tolist()]

"""Distillation as a supervision setting: a student learns to rank like a trained teacher.

The teacher is a run folder written by ``metricvision train``; its embeddings of the training
set (at the teacher's own resolution, eval transform) are computed once and cached in the
student's run folder, so a student of another backbone / resolution trains without running
the teacher again. Each batch adds ``weight`` x a distillation loss (``losses/distillation.py``:
kd, rkd_distance, rkd_angle, rank_distillation, embedding_distillation) between the student's (B, D_s) embeddings and
the cached (B, D_t) teacher embeddings of the same samples to the student's own loss. With
``distill.init_from_teacher`` a student of the teacher's architecture starts from its trained weights
(the same network at a lower input resolution: cheaper inference, fine-tuned to rank like the teacher).
With ``distill.views`` K > 0 the cache holds the teacher's embeddings of K augmented views of each image
(``distill_views.py``) and the student trains on the same views at its own resolution: each augmented image
is pulled onto the teacher's embedding of that augmented image, not of the clean one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch

from metricvision.data.sample import SampleDataset
from metricvision.data.transforms import TRANSFORMS, TrainAugment
from metricvision.losses import LOSSES, LossOutput
from metricvision.losses.distillation import DistillationLoss
from metricvision.supervision.base import SUPERVISIONS
from metricvision.supervision.distill_views import VIEWS_CACHE, ViewDataset, cached_teacher_embeddings, teacher_view_embeddings

CACHE = "teacher_embeddings.pt"


def teacher_embeddings(teacher_run: str | Path, samples: list, device: torch.device, cache: Path) -> torch.Tensor:
    """(N, D_t) embeddings of ``samples`` by the teacher of ``teacher_run``, read from ``cache`` when it
    holds this teacher's embeddings of N samples, else computed and written there (atomically)."""
    def embed(recipe: Any, model: torch.nn.Module) -> torch.Tensor:
        loader = torch.utils.data.DataLoader(SampleDataset(samples, TRANSFORMS.create("eval", size=recipe.data.image_size)),
                                             batch_size=256)
        return model.encode(x for x, _ in loader).float().cpu()

    return cached_teacher_embeddings(teacher_run, {"samples": len(samples)}, cache, device, embed)


def init_from_teacher(student: torch.nn.Module, teacher_run: str | Path) -> None:
    """Copy the trained weights of the teacher run's model into ``student`` (the same architecture).

    Raises:
        ValueError: the architectures differ (names the first mismatching parameters).
    """
    from metricvision.engine.runs import load_run

    _, teacher = load_run(teacher_run)
    mine, theirs = student.state_dict(), teacher.state_dict()
    differ = sorted(set(mine) ^ set(theirs)) + [k for k in mine if k in theirs and mine[k].shape != theirs[k].shape]
    if differ:
        raise ValueError(f"distill.init_from_teacher: the student's model differs from the teacher's ({teacher_run}) in "
                         f"{differ[:3]}; use the teacher's model.backbone / model.dim / model.pooling, or init_from_teacher=false")
    student.load_state_dict(theirs)


def _distillation_loss(name: str, params: Dict[str, Any], field: str) -> DistillationLoss:
    """The registered distillation loss ``name`` built with ``params``; ``field`` names the recipe field in errors."""
    loss = LOSSES.create(name, **params)
    if not isinstance(loss, DistillationLoss):
        raise ValueError(f"{field} must be a distillation loss (kd, rkd_distance, rkd_angle, rank_distillation, "
                         f"embedding_distillation), got '{name}'")
    return loss


@SUPERVISIONS.register("distillation")
class TeacherDistillation:
    """Hook adding ``weight`` x a distillation loss towards cached teacher embeddings.

    Every argument left None is read from the recipe's ``distill`` section in ``on_fit_start``.

    Args:
        teacher: the teacher's run folder.
        loss: a registered distillation loss name.
        params: its keyword arguments.
        weight: factor of the distillation term.
        use_labels: False hides the labels from the student's own loss (distillation only).
        views: K > 0 distils towards the teacher's embeddings of K cached augmented views (``distill_views``).
        also: more distillation losses (default parameters) -> their weights, added beside the main term.
    """

    def __init__(self, teacher: Optional[str] = None, loss: Optional[str] = None, params: Optional[Dict[str, Any]] = None,
                 weight: Optional[float] = None, use_labels: Optional[bool] = None, views: Optional[int] = None,
                 also: Optional[Dict[str, float]] = None) -> None:
        self.teacher, self.loss_name, self.params, self.weight = teacher, loss, params, weight
        self.use_labels, self.views, self.also = use_labels, views, also
        self.embeddings_: Optional[torch.Tensor] = None  # (N, D_t), or (N, K, D_t) with views
        self.views_: Optional[ViewDataset] = None
        self.loss_: Optional[DistillationLoss] = None
        self.also_: Dict[str, DistillationLoss] = {}

    def on_fit_start(self, trainer: Any) -> None:
        """Resolve the settings, build the loss and load (or compute and cache) the teacher embeddings."""
        d = trainer.recipe.distill
        self.teacher = self.teacher or d.teacher
        if not self.teacher:
            raise ValueError("supervision 'distillation' needs a teacher run folder: --set distill.teacher=RUN")
        self.loss_name = self.loss_name or d.loss
        self.params = d.params if self.params is None else self.params
        self.weight = d.weight if self.weight is None else self.weight
        self.use_labels = d.use_labels if self.use_labels is None else self.use_labels
        self.views = d.views if self.views is None else self.views
        if self.views < 0:
            raise ValueError(f"distill.views must be >= 0, got {self.views}")
        if not 0 <= d.mixup <= 1:
            raise ValueError(f"distill.mixup must be in [0, 1] (the fraction of views blended), got {d.mixup}")
        if d.mixup and not self.views:
            raise ValueError(f"distill.mixup={d.mixup} blends augmented views: it needs distill.views > 0")
        self.also = dict(d.also if self.also is None else self.also)
        self.loss_ = _distillation_loss(self.loss_name, self.params, "distill.loss").to(trainer.device)
        self.also_ = {name: _distillation_loss(name, {}, "distill.also").to(trainer.device) for name in self.also}
        if d.init_from_teacher and trainer.epoch == 0:  # not on a resumed run: its checkpoint holds the student
            init_from_teacher(trainer.model, self.teacher)
        if self.views:
            self._use_views(trainer)
        else:
            self.embeddings_ = teacher_embeddings(self.teacher, trainer.train_samples, trainer.device, trainer.run_dir / CACHE)
        trainer._log({"event": "supervision", "teacher": str(self.teacher), "teacher_dim": int(self.embeddings_.shape[-1])})

    def _use_views(self, trainer: Any) -> None:
        """Cache the teacher's embeddings of K views per image; the student's training set becomes those views."""
        data = trainer.recipe.data
        augment = trainer.train_set.transform
        if not isinstance(augment, TrainAugment):
            raise ValueError(f"distill.views needs data.train_transform 'train' (TrainAugment), got '{data.train_transform}'")
        seed = trainer.recipe.train.seed
        mixup = trainer.recipe.distill.mixup
        self.embeddings_ = teacher_view_embeddings(self.teacher, trainer.train_set, data.train_transform_params, self.views,
                                                   seed, trainer.device, trainer.run_dir / VIEWS_CACHE, mixup=mixup)
        self.views_ = ViewDataset(trainer.train_set, augment, self.views, seed, mixup)
        trainer.train_set = self.views_

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        """With views: draw the view of every image for this epoch."""
        if self.views_ is not None:
            self.views_.choose(epoch)

    def targets(self, trainer: Any, indices: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The labels, or all -1 (ignored by the student's own loss) with ``use_labels=False``."""
        return labels if self.use_labels else torch.full_like(labels, -1)

    def extra_loss(self, trainer: Any, indices: torch.Tensor, embeddings: torch.Tensor) -> LossOutput:
        """``weight`` x the distillation loss of the (B, D_s) student embeddings against the teacher's."""
        if self.loss_ is None or self.embeddings_ is None:
            raise RuntimeError("distillation: on_fit_start(trainer) must run first")
        rows = indices.cpu()
        teacher = self.embeddings_[rows] if self.views_ is None else self.embeddings_[rows, self.views_.view_of[rows]]
        teacher = teacher.to(embeddings.device)
        out = self.loss_(embeddings, teacher)
        value, logs = self.weight * out.value, {"distill": float(out.value.detach()), **out.logs}
        for name, loss in self.also_.items():
            term = loss(embeddings, teacher).value
            value = value + self.also[name] * term
            logs[f"distill_{name}"] = float(term.detach())
        return LossOutput(value, logs)

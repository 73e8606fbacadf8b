"""Label propagation combined with a mean teacher (after Iscen et al., "Label Propagation for Deep
Semi-supervised Learning", CVPR 2019, who add Tarvainen & Valpola's mean teacher to it).

A simplified combination for metric learning: the student trains on the propagated pseudo-labels
(``LabelPropagation``) plus ``consistency`` x the mean squared distance between its embeddings of the
batch and those of its exponential moving average (the teacher), where the paper's consistency is
between class posteriors. As in the paper's mean teacher, the teacher sees its own augmentation of
each image (``second_view``), runs in training mode (batch statistics, as the student), the weight
of the consistency ramps up as exp(-5 (1 - t)^2) over the first ``ramp_up`` epochs, and the decay is
min(``ema_decay``, 1 - 1 / (step + 1)) (a true average over the first steps). With
``teacher_propagates`` the teacher's embeddings of the training set drive the propagation; with
``final_teacher`` the teacher's weights become the model after the last epoch (the one evaluated and
saved, as the paper reports its EMA model). The teacher and its step count are saved with every
checkpoint (a resumed run continues with them).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Dict, Optional

import torch
from torch import nn

from metricvision.data.transforms import as_float_images
from metricvision.models.averaging import ema_step
from metricvision.losses import LossOutput
from metricvision.supervision.base import SUPERVISIONS, LabelsLike
from metricvision.supervision.propagation import LabelPropagation


def sigmoid_ramp_up(step: float, length: float) -> float:
    """exp(-5 (1 - t)^2) with t = step / length clipped to [0, 1]; 1 when ``length`` <= 0."""
    if length <= 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


@SUPERVISIONS.register("label_propagation_mean_teacher")
class MeanTeacherPropagation(LabelPropagation):
    """Label propagation plus an embedding consistency to an EMA teacher.

    Args:
        ema_decay: teacher <- d teacher + (1 - d) student each step, d = min(ema_decay, 1 - 1 / (step + 1)).
        consistency: weight of the consistency term (after the ramp-up).
        ramp_up: epochs over which the consistency weight ramps up (0: none).
        second_view: the teacher embeds another random augmentation of the batch's images
            (otherwise the student's own input).
        teacher_propagates: propagate on the teacher's embeddings (otherwise the student's).
        final_teacher: after the last epoch the model takes the teacher's weights.
        other arguments: see ``LabelPropagation``.
    """

    def __init__(self, labels: Optional[LabelsLike] = None, ema_decay: float = 0.99, consistency: float = 1.0,
                 ramp_up: float = 0.0, second_view: bool = True, teacher_propagates: bool = False,
                 final_teacher: bool = False, **propagation: Any) -> None:
        if not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if ramp_up < 0:
            raise ValueError(f"ramp_up must be >= 0, got {ramp_up}")
        self.ema_decay, self.consistency, self.ramp_up = ema_decay, consistency, ramp_up
        self.second_view, self.teacher_propagates, self.final_teacher = second_view, teacher_propagates, final_teacher
        self.teacher_: Optional[nn.Module] = None
        self.images_: Optional[torch.Tensor] = None
        self.steps_ = 0  # EMA updates so far
        super().__init__(labels, **propagation)

    def on_fit_start(self, trainer: Any) -> None:
        """Bind the labels, start the teacher from the student, keep the images of every training forward."""
        super().on_fit_start(trainer)
        self.teacher_ = copy.deepcopy(trainer.model).requires_grad_(False)
        teacher = {k[len("teacher."):]: v for k, v in self.restored_.items() if k.startswith("teacher.")}
        if teacher:
            self.teacher_.load_state_dict(teacher)
        if "teacher_steps" in self.restored_:
            self.steps_ = int(self.restored_["teacher_steps"])
        trainer.model.register_forward_pre_hook(self._keep)

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        """Refresh the pseudo-labels from the teacher's (``teacher_propagates``) or the student's embeddings."""
        if not (self.teacher_propagates and self.refresh_due(epoch)):
            return super().on_epoch_start(trainer, epoch)
        student, trainer.model = trainer.model, self.teacher_
        try:
            embeddings = trainer.embed(trainer.train_samples)
        finally:
            trainer.model = student
        trainer._log({"event": "supervision", "epoch": epoch, **self.refresh(embeddings)})

    def on_epoch_end(self, trainer: Any, epoch: int, record: Dict[str, float]) -> None:
        """After the last epoch, with ``final_teacher``: the model takes the teacher's weights."""
        if self.final_teacher and self.teacher_ is not None and epoch >= trainer.planned_epochs():
            trainer.model.load_state_dict(self.teacher_.state_dict())

    def checkpoint_state(self) -> Dict[str, torch.Tensor]:
        """The pseudo-labels (``LabelPropagation``), the teacher's weights and its step count."""
        state = super().checkpoint_state()
        if self.teacher_ is not None:
            state.update({f"teacher.{k}": v for k, v in self.teacher_.state_dict().items()})
            state["teacher_steps"] = torch.tensor(self.steps_)
        return state

    def _keep(self, module: nn.Module, args: Any) -> None:
        if module.training:
            self.images_ = args[0]

    def update_teacher(self, student: nn.Module) -> None:
        """One EMA step of the teacher's parameters towards the student's (buffers copied)."""
        self.steps_ += 1
        ema_step(self.teacher_, student, self.ema_decay, self.steps_)

    def teacher_input(self, trainer: Any, indices: torch.Tensor) -> torch.Tensor:
        """The teacher's images of the batch: another augmentation of each (``second_view``) or the student's."""
        if not self.second_view:
            return self.images_
        views = torch.stack([x for x, _ in trainer.train_set.__getitems__(indices.tolist())])  # the batched augmentation
        return as_float_images(views.to(self.images_.device))

    def consistency_weight(self, trainer: Any) -> float:
        """``consistency`` x the ramp-up at the current step."""
        return self.consistency * sigmoid_ramp_up(self.steps_, self.ramp_up * len(trainer.sampler))

    def extra_loss(self, trainer: Any, indices: torch.Tensor, embeddings: torch.Tensor) -> LossOutput:
        """Ramped ``consistency`` x mean over the batch of ||student - teacher||^2 of the (B, D) embeddings."""
        if self.teacher_ is None or self.images_ is None:
            raise RuntimeError("mean teacher: on_fit_start(trainer) and a training forward must come first")
        self.update_teacher(trainer.model)
        weight = self.consistency_weight(trainer)
        with torch.no_grad():
            self.teacher_.train()
            target = self.teacher_(self.teacher_input(trainer, indices)).float()
        gap = ((embeddings - target) ** 2).sum(1).mean()
        return LossOutput(weight * gap, {"consistency": float(gap.detach()), "consistency_weight": weight})

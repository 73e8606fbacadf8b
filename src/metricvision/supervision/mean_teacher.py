"""Label propagation combined with a mean teacher (after Iscen et al., "Label Propagation for Deep
Semi-supervised Learning", CVPR 2019, who add Tarvainen & Valpola's mean teacher to it).

A simplified combination: the student trains on the propagated pseudo-labels (``LabelPropagation``)
plus ``consistency`` x the mean squared distance between its embeddings of the batch and those of
its exponential moving average (the teacher, decay ``ema_decay``) on the same augmented images;
the paper's consistency is between class posteriors on two augmentations of the image. The teacher
is updated before each step from the student's weights after the previous one, and saved with every
checkpoint (a resumed run continues with it).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import torch
from torch import nn

from metricvision.losses import LossOutput
from metricvision.supervision.base import SUPERVISIONS, LabelsLike
from metricvision.supervision.propagation import LabelPropagation


@SUPERVISIONS.register("label_propagation_mean_teacher")
class MeanTeacherPropagation(LabelPropagation):
    """Label propagation plus an embedding consistency to an EMA teacher.

    Args:
        ema_decay: teacher <- ema_decay teacher + (1 - ema_decay) student, each step.
        consistency: weight of the consistency term.
        other arguments: see ``LabelPropagation``.
    """

    def __init__(self, labels: Optional[LabelsLike] = None, ema_decay: float = 0.99, consistency: float = 1.0,
                 **propagation: Any) -> None:
        if not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.ema_decay, self.consistency = ema_decay, consistency
        self.teacher_: Optional[nn.Module] = None
        self.images_: Optional[torch.Tensor] = None
        super().__init__(labels, **propagation)

    def on_fit_start(self, trainer: Any) -> None:
        """Bind the labels, start the teacher from the student, keep the images of every training forward."""
        super().on_fit_start(trainer)
        self.teacher_ = copy.deepcopy(trainer.model).eval().requires_grad_(False)
        teacher = {k[len("teacher."):]: v for k, v in self.restored_.items() if k.startswith("teacher.")}
        if teacher:
            self.teacher_.load_state_dict(teacher)
        trainer.model.register_forward_pre_hook(self._keep)

    def checkpoint_state(self) -> Dict[str, torch.Tensor]:
        """The pseudo-labels (``LabelPropagation``) and the teacher's weights."""
        state = super().checkpoint_state()
        if self.teacher_ is not None:
            state.update({f"teacher.{k}": v for k, v in self.teacher_.state_dict().items()})
        return state

    def _keep(self, module: nn.Module, args: Any) -> None:
        if module.training:
            self.images_ = args[0]

    @torch.no_grad()
    def update_teacher(self, student: nn.Module) -> None:
        """One EMA step of the teacher's parameters towards the student's (buffers copied)."""
        for t, s in zip(self.teacher_.parameters(), student.parameters()):
            t.mul_(self.ema_decay).add_(s.detach(), alpha=1 - self.ema_decay)
        for t, s in zip(self.teacher_.buffers(), student.buffers()):
            t.copy_(s)

    def extra_loss(self, trainer: Any, indices: torch.Tensor, embeddings: torch.Tensor) -> LossOutput:
        """``consistency`` x mean over the batch of ||student - teacher||^2 of the (B, D) embeddings."""
        if self.teacher_ is None or self.images_ is None:
            raise RuntimeError("mean teacher: on_fit_start(trainer) and a training forward must come first")
        self.update_teacher(trainer.model)
        with torch.no_grad():
            target = self.teacher_(self.images_).float()
        gap = ((embeddings - target) ** 2).sum(1).mean()
        return LossOutput(self.consistency * gap, {"consistency": float(gap.detach())})

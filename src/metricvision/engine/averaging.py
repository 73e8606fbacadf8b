"""An exponential moving average of the model's weights (``train.ema``), the model evaluated and saved.

After every optimizer step the average moves towards the weights, a <- d a + (1 - d) w with
d = min(``decay``, 1 - 1 / (step + 1)) (a true average over the first steps, as the mean teacher's);
buffers (batch-norm statistics) are copied. After the last epoch the model takes the average's
weights, so the final evaluation, metrics.json and the checkpoint are the average's. The average and
its step count are saved with every checkpoint (a resumed run continues them).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import torch
from torch import nn

from metricvision.models.averaging import ema_step


class ModelAverage:
    """Trainer hook keeping the moving average of the model's weights (Polyak averaging).

    Args:
        decay: the largest decay, in (0, 1); 0.999 averages over about the last 1,000 steps.
    """

    def __init__(self, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"train.ema must be in (0, 1) (0 turns it off), got {decay}")
        self.decay = decay
        self.average_: Optional[nn.Module] = None
        self.steps_ = 0
        self.restored_: Dict[str, torch.Tensor] = {}

    def on_fit_start(self, trainer: Any) -> None:
        """Start the average from the model's weights, or from a resumed checkpoint's average."""
        self.average_ = copy.deepcopy(trainer.model).requires_grad_(False)
        saved = {k[len("average."):]: v for k, v in self.restored_.items() if k.startswith("average.")}
        if saved:
            self.average_.load_state_dict(saved)
            self.steps_ = int(self.restored_["steps"])

    def on_step_end(self, trainer: Any) -> None:
        """One averaging step after the optimizer's."""
        self.steps_ += 1
        ema_step(self.average_, trainer.model, self.decay, self.steps_)

    def on_epoch_end(self, trainer: Any, epoch: int, record: Dict[str, float]) -> None:
        """After the last epoch the model takes the average's weights."""
        if epoch >= trainer.planned_epochs():
            trainer.model.load_state_dict(self.average_.state_dict())

    def checkpoint_state(self) -> Dict[str, torch.Tensor]:
        """The average's weights and its step count."""
        if self.average_ is None:
            return {}
        return {**{f"average.{k}": v for k, v in self.average_.state_dict().items()}, "steps": torch.tensor(self.steps_)}

    def restore_state(self, state: Dict[str, torch.Tensor]) -> None:
        """Keep a checkpoint's state until ``on_fit_start``."""
        self.restored_ = dict(state)

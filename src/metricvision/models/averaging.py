"""Exponential moving averages of a network's weights (a mean teacher, Polyak averaging)."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_step(average: nn.Module, model: nn.Module, decay: float, steps: int) -> None:
    """Move ``average``'s parameters towards ``model``'s, a <- d a + (1 - d) w with d = min(decay, 1 - 1 / (steps + 1))
    (``steps``: the updates so far, this one included: a true average over the first steps); copy the buffers."""
    d = min(decay, 1.0 - 1.0 / (steps + 1))
    for a, w in zip(average.parameters(), model.parameters()):
        a.mul_(d).add_(w.detach(), alpha=1 - d)
    for a, w in zip(average.buffers(), model.buffers()):
        a.copy_(w)

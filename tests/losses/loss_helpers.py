"""Shared inputs and a value + gradient comparison for the loss tests."""
from __future__ import annotations

from typing import Callable

import torch

Fn = Callable[[torch.Tensor], torch.Tensor]


def batch(n_classes: int = 6, per_class: int = 4, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, dim) float64 embeddings with shuffled labels, N = n_classes * per_class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    labels = labels[torch.randperm(len(labels), generator=g)]
    return torch.randn(len(labels), dim, generator=g, dtype=torch.float64), labels


def assert_same(ours: Fn, theirs: Fn, x: torch.Tensor, rtol: float = 1e-6) -> None:
    """Loss values and gradients w.r.t. ``x`` agree to ``rtol`` (relative, float64); the loss is not 0."""
    a = x.detach().clone().requires_grad_(True)
    b = x.detach().clone().requires_grad_(True)
    va, vb = ours(a), torch.as_tensor(theirs(b))
    assert float(va.detach()) != 0.0, "a comparison on a zero loss cannot fail"
    torch.testing.assert_close(va.detach().double(), vb.detach().double(), rtol=rtol, atol=1e-12)
    va.backward()
    vb.backward()
    scale = b.grad.abs().max().clamp_min(1e-12)
    torch.testing.assert_close(a.grad / scale, b.grad / scale, rtol=rtol, atol=rtol)

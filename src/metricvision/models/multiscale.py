"""Multi-scale global descriptors (Radenovic et al., TPAMI 2018; cirtorch ``extract_ms``)."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

DEFAULT_SCALES = (1.0, 1.0 / math.sqrt(2.0), 0.5)
COMBINES = ("sum", "gem")


def multiscale_embed(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    scales: Sequence[float] = DEFAULT_SCALES,
    combine: str = "gem",
    p: float = 3.0,
) -> torch.Tensor:
    """Embed images at several scales and combine into one L2-normalized descriptor.

    Each scale resizes the batch bilinearly; the per-scale embeddings are summed
    ("sum") or generalized-mean pooled over scales ("gem": (mean e^p)^(1/p), using the
    signed power so that negative coordinates stay defined), then L2-normalized.
    Wrap in ``torch.no_grad()`` and put the model in eval mode for inference.

    Args:
        model: an Embedder-like callable (N, 3, H, W) -> (N, D).
        images: (N, 3, H, W) batch.
        scales: resize factors, e.g. (1, 1/sqrt(2), 1/2).
        combine: "sum" or "gem".
        p: GeM exponent over scales (> 0).

    Returns:
        (N, D) L2-normalized descriptors.
    """
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got '{combine}'")
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be a non-empty list of positive factors, got {list(scales)}")
    if p <= 0:
        raise ValueError(f"p must be > 0, got {p}")
    if images.dim() != 4:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    total = None
    for s in scales:
        x = images if s == 1 else F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
        e = model(x)
        if combine == "gem":
            e = e.sign() * e.abs().pow(p)
        total = e if total is None else total + e
    if combine == "gem":
        total = total / len(scales)
        total = total.sign() * total.abs().pow(1.0 / p)
    return F.normalize(total, dim=1)

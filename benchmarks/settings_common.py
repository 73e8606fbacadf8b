"""Shared pieces of the supervision-setting experiments (benchmarks/settings_*.py).

To fit a couple of CPU minutes per setting, the pretrained MobileNetV2 is frozen: its
GeM-pooled features (and 2x2 feature maps) of the emoji images at 48 px are computed once
and cached; each setting trains a small head (linear 1280 -> 128) on them with the
library's losses and supervision objects.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from metricvision.data.emoji import load_emoji
from metricvision.metrics import evaluate_retrieval
from metricvision.models import Embedder

CACHE = Path(os.environ.get("METRICVISION_CACHE", Path.home() / ".cache" / "metricvision")) / "settings"


def emoji_features(split: str, size: int = 48) -> Dict[str, object]:
    """{"x": (N, 1280) pooled features, "maps": (N, 1280, h, w), "y": (N,) labels, "samples"}."""
    samples = load_emoji(split)
    path = CACHE / f"mobilenet_v2_{split}_{size}.pt"
    if path.exists():
        data = torch.load(path)
    else:
        torch.manual_seed(0)
        model = Embedder("mobilenet_v2", pooling="gem", dim=0, pretrained=True, normalize=False).eval()
        imgs = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 255
        maps, pooled = [], []
        with torch.no_grad():
            for b in imgs.split(256):
                b = F.interpolate(b, size=(size, size), mode="bilinear", align_corners=False)
                f = model.features(b)
                maps.append(f)
                pooled.append(model.pool(f))
        data = {"x": torch.cat(pooled), "maps": torch.cat(maps)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(data, tmp)
        os.replace(tmp, path)
    data["y"] = torch.tensor([s.label for s in samples])
    data["samples"] = samples
    return data


def make_head(in_dim: int = 1280, dim: int = 128, seed: int = 0) -> torch.nn.Module:
    """Linear head followed by L2 normalization."""
    torch.manual_seed(seed)
    lin = torch.nn.Linear(in_dim, dim)
    return torch.nn.Sequential(lin, _Normalize())


class _Normalize(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1)


def train_head(
    head: torch.nn.Module,
    x: torch.Tensor,
    epochs: int,
    batches: Callable[[int, torch.nn.Module], List[List[int]]],
    step_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    lr: float = 1e-3,
) -> torch.nn.Module:
    """Adam on the head: each epoch ``batches(epoch, head)`` gives index lists and
    ``step_loss(embeddings (B, D), indices (B,))`` the loss of a batch."""
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for epoch in range(epochs):
        head.train()
        for b in batches(epoch, head):
            idx = torch.tensor(b)
            loss = step_loss(head(x[idx]), idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.eval()


@torch.no_grad()
def embed(head: Optional[torch.nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Embeddings of features through the head (or the normalized features)."""
    return F.normalize(x, dim=1) if head is None else head.eval()(x)


def retrieval(head: Optional[torch.nn.Module], test: Dict[str, object]) -> Dict[str, float]:
    """P@1 and MAP@R on the unseen test identities."""
    m = evaluate_retrieval(embed(head, test["x"]), test["y"], ks=(1,), clustering=False)
    return {"P@1": 100 * m["precision@1"], "MAP@R": 100 * m["map@r"]}


class Timer:
    """Seconds since construction."""

    def __init__(self) -> None:
        self.t0 = time.time()

    def __call__(self) -> float:
        return time.time() - self.t0


def print_table(rows: List[Dict[str, object]]) -> None:
    """Markdown table of result rows."""
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")

"""Second stage of the detector: re-embedding each proposal's crop in the metric space.

A proposal is cut out of the image as a square (``square_boxes``, ``crop_boxes``),
resized to the side the Embedder was trained at, and embedded by ``CropEmbedder``: the
Embedder's frozen early layers followed by a trainable copy of its last backbone layers
and head. Crops look like the queries the Embedder learned from (one object, filling the
image), which the stride-32 dense embeddings of a 24 px object do not. ``train_crop_embedder``
fits the trainable part with a metric loss of the package against the identities'
reference embeddings (another vendor's rendering, the name), on jittered crops of the
ground-truth boxes of train scenes; the frozen part's outputs are computed once.
"""
from __future__ import annotations

import copy
import math
from typing import List, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from metricvision.localization.detector import HeadSteps
from metricvision.losses import LOSSES
from metricvision.models import Embedder


def square_boxes(boxes: torch.Tensor, pad: float = 0.0) -> torch.Tensor:
    """(n, 4) x0 y0 x1 y1 -> (n, 4) squares of side max(w, h) * (1 + pad) around the same centres."""
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(dim=1, keepdim=True).values * (1 + pad) / 2
    return torch.cat([c - half, c + half], dim=1)


def crop_boxes(image: torch.Tensor, boxes: torch.Tensor, side: int, pad: float = 0.0) -> torch.Tensor:
    """(3, H, W) image, (n, 4) boxes in pixels -> (n, 3, side, side) square crops (bilinear, zeros outside)."""
    from torchvision.ops import roi_align

    if len(boxes) == 0:
        return image.new_zeros(0, 3, side, side)
    sq = square_boxes(boxes.to(image.dtype), pad)
    return roi_align(image[None], [sq], output_size=(side, side), spatial_scale=1.0, sampling_ratio=2, aligned=True)


class CropEmbedder(nn.Module):
    """Embeds crops: the Embedder's first ``split`` backbone layers (frozen) then trainable copies of the rest and the head.

    Args:
        embedder: the (frozen) Embedder; its backbone must be an ``nn.Sequential``.
        split: index of the first trainable backbone layer.
        side: crop side in pixels (the Embedder's training size).
        pad: crops are squares ``pad`` larger than the box's long side.
    """

    def __init__(self, embedder: Embedder, split: int = 17, side: int = 64, pad: float = 0.1) -> None:
        super().__init__()
        if not isinstance(embedder.backbone, nn.Sequential):
            raise ValueError(f"CropEmbedder needs an nn.Sequential backbone, got {type(embedder.backbone).__name__}")
        if embedder.taps:
            raise ValueError(f"CropEmbedder needs an embedder without taps (a hypercolumn), got taps {list(embedder.taps)}")
        if not 0 < split < len(embedder.backbone):
            raise ValueError(f"split must be in (0, {len(embedder.backbone)}), got {split}")
        self.embedder = embedder.eval().requires_grad_(False)
        self.split, self.side, self.pad = split, side, pad
        self.tail = copy.deepcopy(embedder.backbone[split:]).requires_grad_(True)
        self.pool = copy.deepcopy(embedder.pool)
        self.proj = copy.deepcopy(embedder.head).requires_grad_(True)

    def train(self, mode: bool = True) -> "CropEmbedder":
        super().train(mode)
        self.embedder.eval()
        self.tail.eval()  # batch norm keeps the Embedder's statistics: batches of crops are small
        return self

    @torch.no_grad()
    def stem(self, crops: torch.Tensor) -> torch.Tensor:
        """(n, 3, side, side) crops in [0, 1] -> (n, C, h, w) outputs of the frozen layers."""
        e = self.embedder
        return e.backbone[: self.split]((crops - e.mean) / e.std)

    def head(self, stem: torch.Tensor) -> torch.Tensor:
        """(n, C, h, w) ``stem`` outputs -> (n, D) normalized embeddings."""
        return F.normalize(self.proj(self.pool(self.tail(stem))), dim=1)

    @torch.no_grad()
    def embed(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(3, H, W) image in [0, 1], (n, 4) boxes -> (n, D) embeddings of their crops."""
        return self.head(self.stem(crop_boxes(image, boxes, self.side, self.pad)))


def jitter_boxes(boxes: np.ndarray, rng: np.random.Generator, shift: float = 0.1, scale: float = 0.15) -> np.ndarray:
    """(n, 4) boxes -> (n, 4) boxes with centres moved up to ``shift`` of the side and sides scaled up to 1 +- ``scale``."""
    wh = boxes[:, 2:] - boxes[:, :2]
    c = (boxes[:, :2] + boxes[:, 2:]) / 2 + rng.uniform(-shift, shift, (len(boxes), 2)) * wh
    wh = wh * np.exp(rng.uniform(-math.log1p(scale), math.log1p(scale), (len(boxes), 2)))
    return np.concatenate([c - wh / 2, c + wh / 2], axis=1)


def crop_stems(crop: CropEmbedder, images: Sequence[torch.Tensor], boxes: Sequence[np.ndarray], jitters: int = 2,
               seed: int = 0) -> torch.Tensor:
    """Frozen-stem outputs of every box of every image, ``jitters`` jittered crops each -> (jitters, n_boxes, C, h, w)."""
    rng = np.random.default_rng(seed)
    out: List[List[torch.Tensor]] = [[] for _ in range(jitters)]
    for image, b in zip(images, boxes):
        for j in range(jitters):
            jb = b if j == 0 else jitter_boxes(b, rng)
            out[j].append(crop.stem(crop_boxes(image, torch.from_numpy(jb).float(), crop.side, crop.pad)))
    return torch.stack([torch.cat(o) for o in out])


def train_crop_embedder(crop: CropEmbedder, stems: torch.Tensor, ids: torch.Tensor, refs: Sequence[torch.Tensor],
                        ref_ids: torch.Tensor, steps: int = 600, batch_size: int = 128, lr: float = 3e-4,
                        loss: str = "infonce", seed: int = 0, log_every: int = 100) -> List[dict]:
    """Fit the trainable layers: crops' embeddings against the references of their identities.

    Args:
        stems: (jitters, n, C, h, w) from ``crop_stems``; a step draws one jitter per crop.
        ids: (n,) identity of each crop (-1: no reference; left out).
        refs: reference sets, each (R, D), with identities ``ref_ids`` (R,).

    Returns:
        the mean losses every ``log_every`` steps.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    usable = torch.nonzero(ids >= 0).flatten()
    if len(usable) == 0:
        raise ValueError("no crop has a reference identity: check that the scenes and references come from one split")
    torch.manual_seed(seed)
    metric = LOSSES.create(loss)
    head = HeadSteps(crop, lr, steps, log_every, desc="crop embedder")
    crop.train()
    for _ in range(steps):
        pick = usable[torch.randperm(len(usable))[:batch_size]]
        jit = torch.randint(stems.shape[0], (len(pick),))
        emb = crop.head(stems[jit, pick].float())
        value = torch.stack([metric(emb, ids[pick], ref_embeddings=r, ref_labels=ref_ids).value for r in refs]).mean()
        head.step(value, name="crop_metric")
    crop.eval()
    return head.logs

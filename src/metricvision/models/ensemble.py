"""EnsembleEmbedder: several trained Embedders of one architecture used as one model (and EnsembleText: their
text encoders, for members aligned to a text space).

The ensemble's embedding is the concatenation of its M members' normalized embeddings, divided by sqrt(M): it is
unit-norm, and the cosine of two ensemble embeddings is the mean of the members' cosines (the usual score-averaging
ensemble of retrieval models). Its ``features`` are the members' backbone maps stacked along the channels, so code
that computes maps once and embeds them later (``from_features``, ``dense_from_features``) works unchanged.

Members trained at different image sizes (``sizes``) each see the input resized to their own side (antialiased
bilinear), so a crop cut once at the largest side reaches every member at the size it was trained at. Such a
mixed-size ensemble has no shared map grid: its ``features`` are the joined member embeddings as (N, D, 1, 1) maps,
``from_features`` reads them back, and it has no dense maps.
"""
from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from metricvision.models.embedder import BatchedEncoding, Embedder
from metricvision.models.text import TextEncoder


def joined(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """M members' unit embeddings (N, D_i, ...) -> (N, sum D_i, ...): concatenated along dim 1 and divided by sqrt(M),
    so the result is unit-norm and its inner products are the mean of the members'."""
    return torch.cat(list(parts), dim=1) / math.sqrt(len(parts))


def resized(images: torch.Tensor, side: int) -> torch.Tensor:
    """(N, 3, H, W) square images -> (N, 3, side, side), antialiased bilinear (unchanged at that side already)."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"a mixed-size ensemble embeds square images, got {tuple(images.shape[-2:])}")
    if images.shape[-1] == side:
        return images
    return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False, antialias=True)


class EnsembleEmbedder(BatchedEncoding, nn.Module):
    """(N, 3, H, W) images in [0, 1] -> (N, sum of the members' D) unit embeddings.

    Args:
        members: two or more Embedders with L2-normalized outputs (``normalize``) and no BNNeck, of one backbone
            and pooling, whose maps share a grid for a given input (e.g. seeds or recipes of one architecture).
        sizes: each member's input side in pixels, when they differ (None: all take the input as it is).
    """

    def __init__(self, members: Sequence[Embedder], sizes: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        first = members[0]
        for i, m in enumerate(members):
            if not m.normalize or m.neck is not None:
                raise ValueError(f"ensemble member {i} must give L2-normalized embeddings without a BNNeck")
            if (m.backbone_name, type(m.pool), m.dim, m.taps) != (first.backbone_name, type(first.pool), first.dim, first.taps):
                raise ValueError(f"ensemble member {i} ({m.backbone_name}, {type(m.pool).__name__}, dim {m.dim}, taps "
                                 f"{list(m.taps)}) differs from member 0 ({first.backbone_name}, "
                                 f"{type(first.pool).__name__}, dim {first.dim}, taps {list(first.taps)})")
        if sizes is not None and (len(sizes) != len(members) or min(sizes) < 8):
            raise ValueError(f"sizes must give each of the {len(members)} members a side >= 8 px, got {list(sizes)}")
        self.members = nn.ModuleList(members)
        self.sizes: Optional[List[int]] = [int(s) for s in sizes] if sizes is not None and len(set(sizes)) > 1 else None
        self.dim = sum(m.dim for m in members)
        self.backbone_name, self.taps = first.backbone_name, first.taps
        self.channels: List[int] = [sum(m.parts) for m in members]

    def encode(self, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 256,
               scales: Sequence[float] = (1.0,)) -> torch.Tensor:
        """As ``BatchedEncoding.encode``; a mixed-size ensemble refuses several ``scales`` (each member embeds at
        its own side whatever the input's)."""
        if self.sizes is not None and list(scales) != [1.0]:
            raise ValueError(f"an ensemble of members at sizes {self.sizes} embeds each at its own size; "
                             f"multi-scale encoding (scales {list(scales)}) does not apply")
        return super().encode(images, batch_size=batch_size, scales=scales)

    @property
    def pool(self) -> nn.Module:
        """The members' pooling (member 0's module; what the card and multi-scale encoding read)."""
        return self.members[0].pool

    @property
    def head(self) -> nn.Module:
        """Member 0's head: a Linear when the members have heads (what the card reads)."""
        return self.members[0].head

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, sum of the members' C, h, w): their backbone maps, stacked (mixed sizes:
        (N, D, 1, 1), the joined member embeddings, each member's computed at its own side)."""
        if self.sizes is not None:
            return joined([m(resized(images, s)) for m, s in zip(self.members, self.sizes)])[..., None, None]
        maps = [m.features(images) for m in self.members]
        if len({tuple(f.shape[-2:]) for f in maps}) > 1:
            raise ValueError(f"ensemble members give maps of different grids {[tuple(f.shape[-2:]) for f in maps]}")
        return torch.cat(maps, dim=1)

    def _split(self, f: torch.Tensor) -> Sequence[torch.Tensor]:
        if self.sizes is not None:
            raise ValueError(f"an ensemble of members at different sizes {self.sizes} has no dense maps")
        if f.shape[1] != sum(self.channels):
            raise ValueError(f"ensemble features must have {sum(self.channels)} channels, got {f.shape[1]}")
        return f.split(self.channels, dim=1)

    def from_features(self, f: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) ``features`` -> (N, D) what ``forward`` gives for their images."""
        if self.sizes is not None:
            if tuple(f.shape[1:]) != (self.dim, 1, 1):
                raise ValueError(f"mixed-size ensemble features must be (N, {self.dim}, 1, 1), got {tuple(f.shape)}")
            return f.flatten(1)
        return joined([m.from_features(p) for m, p in zip(self.members, self._split(f))])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, D) unit embeddings."""
        return self.from_features(self.features(images))

    def dense(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, D, h, w), unit-norm at every location."""
        return self.dense_from_features(self.features(images))

    def dense_from_features(self, f: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) ``features`` -> (N, D, h, w): each member's dense map, stacked and scaled."""
        return joined([m.dense_from_features(p) for m, p in zip(self.members, self._split(f))])


class EnsembleText:
    """The text side of an ensemble of text-aligned members: (N,) strings -> (N, sum of the members' dims), each
    member's normalized text embedding (in its own image space) concatenated and divided by sqrt(M), so a text-image
    cosine is the mean of the members' text-image cosines.

    Args:
        members: one text encoder per image member, in the members' order (the same object may repeat when the
            members share an untuned text model).
    """

    def __init__(self, members: Sequence[TextEncoder]) -> None:
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = list(members)
        self.dim = sum(m.dim for m in members)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(N,) strings -> (N, D) unit embeddings."""
        return joined([m.encode_text(texts) for m in self.members])

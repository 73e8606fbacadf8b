"""Embedder: backbone (+ tapped layers) -> pooling -> linear head -> optional BNNeck -> L2-normalized embedding."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from metricvision.models.backbones import create_backbone
from metricvision.models.multiscale import multiscale_embed
from metricvision.models.pooling import GeM, create_pooling

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NECKS = ("none", "bnneck")


class BatchedEncoding:
    """Batched, eval-mode ``encode`` and ``encode_dense`` for a module with ``forward`` (N, 3, H, W) -> (N, D),
    ``dense`` -> (N, D, h, w), ``pool`` and ``dim``: the Embedder and the EnsembleEmbedder."""

    @torch.no_grad()
    def encode(
        self, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 256, scales: Sequence[float] = (1.0,)
    ) -> torch.Tensor:
        """Embeddings (N, D) in eval mode, batched; accepts a tensor or an iterable of batches.

        With several ``scales`` each image is embedded at every scale and the embeddings are
        combined as cirtorch's multi-scale test (``multiscale_embed``): a generalized mean with
        the GeM pooling's exponent, a plain sum with other poolings.
        """
        if list(scales) == [1.0]:
            return self._batched(self.forward, images, batch_size)
        p = float(self.pool.p) if isinstance(self.pool, GeM) else 1.0
        combine = "gem" if isinstance(self.pool, GeM) else "sum"
        return self._batched(lambda b: multiscale_embed(self.forward, b, scales, combine, p), images, batch_size)

    @torch.no_grad()
    def encode_dense(self, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 64) -> torch.Tensor:
        """Dense embeddings (N, D, h, w) in eval mode."""
        return self._batched(self.dense, images, batch_size)

    def _batched(self, fn, images, batch_size: int) -> torch.Tensor:
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
        out = [fn(b.to(device)).cpu() for b in batches]
        self.train(was_training)
        return torch.cat(out) if out else torch.empty(0, self.dim)


class Embedder(BatchedEncoding, nn.Module):
    """Maps (N, 3, H, W) images in [0, 1] to (N, D) L2-normalized embeddings.

    Args:
        backbone: backbone name (see ``create_backbone``).
        pooling: a POOLINGS name ("avg", "gem", "max", "modulated_attention").
        dim: embedding size D; 0 keeps the backbone's C channels (no head).
        pretrained: load pretrained backbone weights (offline resolver).
        weights_path: explicit weights file for the backbone.
        normalize: L2-normalize the output.
        neck: "none", or "bnneck" (Luo et al. 2019): batch norm without a learned shift after
            the head. In training mode the output is then (N, 2 * D), the feature before the
            norm (for a triplet term) next to the one after it (for an ID term), as the
            "bnneck_id_triplet" loss expects; in eval mode it is the normalized feature
            after the norm, (N, D).
        last_stride: 1 for the last downsampling at stride 1 (twice the final map); else 2.
        channels_last: run the backbone in channels-last memory format (oneDNN's depthwise and
            grouped convolutions are several times faster so on CPU; tensor cores prefer it on GPU).
        frozen_bn: the backbone's batch norms stay in eval mode in training (their running
            statistics are kept; their affine weights still train), as cirtorch fine-tunes retrieval
            networks; batches of mined tuples would otherwise replace the pretrained statistics.
        taps: indices of an ``nn.Sequential`` backbone's children whose outputs join the last map,
            a simplified hypercolumn (Hariharan et al., CVPR 2015, upsample the layers to the
            pixels; here each tapped map is average-pooled down to the last map's grid and
            concatenated to it). After pooling (or, for dense maps, at each location) every part
            is L2-normalized on its own before the head, so that the 1280 channels of the last
            layer do not drown the few of a middle one.

    Images are normalized with the backbone's ``input_mean`` / ``input_std`` (ImageNet's by default).
    """

    def __init__(
        self,
        backbone: str = "small_cnn",
        pooling: str = "gem",
        dim: int = 128,
        pretrained: bool = False,
        weights_path: Optional[str] = None,
        normalize: bool = True,
        neck: str = "none",
        last_stride: int = 2,
        channels_last: bool = True,
        frozen_bn: bool = False,
        taps: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if dim < 0:
            raise ValueError(f"dim must be >= 0, got {dim}")
        if neck not in NECKS:
            raise ValueError(f"neck must be one of {NECKS}, got '{neck}'")
        self.backbone_name = backbone
        self.frozen_bn = frozen_bn
        self.backbone, channels = create_backbone(backbone, pretrained, weights_path, last_stride)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.backbone.to(memory_format=self.memory_format)
        self.taps = tuple(int(t) for t in taps)
        self.parts = self._tap_channels(channels) if self.taps else (channels,)
        channels = sum(self.parts)
        self.pool = create_pooling(pooling, channels)
        self.head: nn.Module = nn.Linear(channels, dim) if dim else nn.Identity()
        self.dim = dim or channels
        self.normalize = normalize
        self.neck: Optional[nn.BatchNorm1d] = None
        if neck == "bnneck":
            self.neck = nn.BatchNorm1d(self.dim)
            self.neck.bias.requires_grad_(False)  # no shift, as in the paper
        mean = getattr(self.backbone, "input_mean", IMAGENET_MEAN)
        std = getattr(self.backbone, "input_std", IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "Embedder":
        """Training mode, the backbone's batch norms excepted with ``frozen_bn``."""
        super().train(mode)
        if mode and self.frozen_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, C, h, w) backbone feature maps (with taps: the hypercolumn)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
        x = self.backbone_input(images)
        if not self.taps:
            return self.backbone(x)
        tapped = []
        for i, layer in enumerate(self.backbone):
            x = layer(x)
            if i in self.taps:
                tapped.append(x)
        return torch.cat([x] + [F.adaptive_avg_pool2d(t, x.shape[-2:]) for t in tapped], dim=1)

    def _tap_channels(self, channels: int) -> tuple:
        """(last map's channels, then each tapped layer's), checked against the backbone."""
        if not isinstance(self.backbone, nn.Sequential):
            raise ValueError(f"taps need an nn.Sequential backbone; '{self.backbone_name}' is a {type(self.backbone).__name__}")
        n = len(self.backbone)
        bad = [t for t in self.taps if not 0 <= t < n - 1]
        if bad or len(set(self.taps)) != len(self.taps) or list(self.taps) != sorted(self.taps):
            raise ValueError(f"taps must be distinct increasing indices in [0, {n - 2}] of backbone "
                             f"'{self.backbone_name}' (its last layer is the main map), got {list(self.taps)}")
        with torch.no_grad():
            was_training, x, out = self.backbone.training, torch.zeros(1, 3, 64, 64), []
            self.backbone.eval()
            for i, layer in enumerate(self.backbone):
                x = layer(x)
                if i in self.taps:
                    out.append(int(x.shape[1]))
            self.backbone.train(was_training)
        return (channels, *out)

    def _normalize_parts(self, f: torch.Tensor) -> torch.Tensor:
        """(N, C, ...) -> the same with each hypercolumn part L2-normalized along dim 1 (no-op without taps)."""
        if not self.taps:
            return f
        return torch.cat([F.normalize(p, dim=1) for p in f.split(list(self.parts), dim=1)], dim=1)

    def embed_features(self, f: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) feature maps -> (N, D) head outputs, before the neck and the final normalization."""
        return self.head(self._normalize_parts(self.pool(f)))

    def backbone_input(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> the backbone's input: normalized, in the backbone's memory format."""
        return ((images - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, D); (N, 2 * D) in training mode with a BNNeck (see the class)."""
        return self.from_features(self.features(images))

    def from_features(self, f: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) ``features`` -> what ``forward`` gives for the images they come from."""
        z = self.embed_features(f)
        if self.neck is not None:
            after = self.neck(z)
            if self.training:
                return torch.cat([z, after], dim=1)
            z = after
        return F.normalize(z, dim=1) if self.normalize else z

    def dense(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, D, h, w): the head applied at every location, normalized per location."""
        return self.dense_from_features(self.features(images))

    def dense_from_features(self, f: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) backbone feature maps -> (N, D, h, w): the head at every location, normalized per location."""
        f = self._normalize_parts(f)
        if isinstance(self.head, nn.Linear):
            f = torch.einsum("nchw,dc->ndhw", f, self.head.weight) + self.head.bias.view(1, -1, 1, 1)
        return F.normalize(f, dim=1) if self.normalize else f

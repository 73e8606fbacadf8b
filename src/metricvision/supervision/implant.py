"""A simplified implanting (Lifchitz et al., CVPR 2019) of a trained Embedder, episode by episode.

The backbone (an nn.Sequential, e.g. our small CNN or MobileNetV2's features) is split before its
last block; new convolution filters (one 3 x 3 convolution, the implant) run in parallel to that
block on the same input, and their maps are concatenated with the block's own. With the backbone
frozen, the implant is trained on an episode's support set by dense classification of every location
against the support prototypes (cosine classifier); queries are then classified by the prototypes of
the pooled, concatenated features. The paper implants beside each of several last layers, each
implant also fed by the previous implants; here one implant sits beside the whole last block.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metricvision.similarity import similarity
from metricvision.supervision.fewshot import EpisodeSampler, classify, mean_and_interval, prototypes


def split_last_block(backbone: nn.Module) -> Tuple[nn.Module, nn.Module]:
    """(everything before the last block, the last block) of a Sequential backbone."""
    if not isinstance(backbone, nn.Sequential) or len(backbone) < 2:
        raise ValueError(f"implanting needs an nn.Sequential backbone of >= 2 blocks, got {type(backbone).__name__}")
    return backbone[:-1], backbone[-1]


class BackboneImplant(nn.Module):
    """New filters beside the last block: a 3 x 3 convolution + ReLU on the block's input, strided to its output size.

    Args:
        in_channels: channels entering the last block.
        dim: implant filters.
        stride: the last block's downsampling factor.
    """

    def __init__(self, in_channels: int, dim: int = 32, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, dim, 3, stride=stride, padding=1)

    def forward(self, stem: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) block input and (N, C, h, w) block output -> (N, C + dim, h, w)."""
        return torch.cat([last, F.relu(self.conv(stem))], 1)


def _pooled(maps: torch.Tensor) -> torch.Tensor:
    return F.normalize(maps.mean((2, 3)), dim=1)


def implant_episode(stem_s: torch.Tensor, last_s: torch.Tensor, stem_q: torch.Tensor, last_q: torch.Tensor, n_way: int,
                    k_shot: int, dim: int = 32, steps: int = 20, lr: float = 0.05, scale: float = 10.0, seed: int = 0) -> torch.Tensor:
    """Train an implant on one episode's support maps, then score its queries.

    Args:
        stem_s, last_s: (S, C_in, H, W) last-block inputs and (S, C, h, w) outputs of the class-ordered support.
        stem_q, last_q: the same for the queries.

    Returns:
        (Q, n_way) cosine logits of the queries against the implanted support prototypes.
    """
    torch.manual_seed(seed)
    implant = BackboneImplant(stem_s.shape[1], dim, max(1, stem_s.shape[-1] // last_s.shape[-1]))
    opt = torch.optim.SGD(implant.parameters(), lr=lr, momentum=0.9)
    y = torch.arange(n_way).repeat_interleave(k_shot)
    for _ in range(steps):
        maps = implant(stem_s, last_s)
        protos = prototypes(_pooled(maps), n_way, k_shot).detach()
        loc = F.normalize(maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1]), dim=1)
        loss = F.cross_entropy(scale * similarity(loc, protos, "cosine"), y.repeat_interleave(maps.shape[2] * maps.shape[3]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        protos = prototypes(_pooled(implant(stem_s, last_s)), n_way, k_shot)
        return classify(_pooled(implant(stem_q, last_q)), protos, "cosine", scale)


@torch.no_grad()
def block_maps(backbone: nn.Module, images: torch.Tensor, batch: int = 128) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N, C_in, H, W) inputs and (N, C, h, w) outputs of the frozen last block for normalized (N, 3, H0, W0) images."""
    stem, last = split_last_block(backbone)
    ins, outs = [], []
    for s in range(0, len(images), batch):
        x = stem(images[s : s + batch])
        ins.append(x)
        outs.append(last(x))
    return torch.cat(ins), torch.cat(outs)


def evaluate_implanting(stem: torch.Tensor, last: torch.Tensor, labels: np.ndarray, n_way: int = 5, k_shot: int = 1,
                        n_query: int = 15, episodes: int = 200, seed: int = 0, dim: int = 32, steps: int = 20) -> Dict[str, float]:
    """Few-shot accuracy with its 95% interval, with an implant per episode and without (the frozen last block).

    Args:
        stem, last: (N, C_in, H, W) and (N, C, h, w) maps of every evaluation image (``block_maps``).
        labels: (N,) labels.
    """
    with_implant, without = [], []
    y = torch.arange(n_way).repeat_interleave(n_query)
    for e, (s, q) in enumerate(EpisodeSampler(labels, n_way, k_shot, n_query, episodes, seed)):
        s, q = torch.from_numpy(s), torch.from_numpy(q)
        logits = implant_episode(stem[s], last[s], stem[q], last[q], n_way, k_shot, dim, steps, seed=seed + e)
        with_implant.append(float((logits.argmax(1) == y).float().mean()))
        base = classify(_pooled(last[q]), prototypes(_pooled(last[s]), n_way, k_shot), "cosine")
        without.append(float((base.argmax(1) == y).float().mean()))
    out = mean_and_interval(np.array(with_implant))
    out.update({f"frozen_{k}": v for k, v in mean_and_interval(np.array(without)).items() if k != "episodes"})
    return out

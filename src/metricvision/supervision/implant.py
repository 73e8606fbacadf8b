"""Implanting (Lifchitz et al., CVPR 2019) of a trained Embedder, episode by episode.

The backbone (an nn.Sequential, e.g. our small CNN or MobileNetV2's features) is cut into conv layers
(``conv_layers``: nested Sequentials flattened, a layer starting at each convolution or composite block).
New convolution filters, the implants, run in parallel to each of the last ``layers`` layers: implant j
sees the input of layer j (frozen maps) concatenated with the output of implant j - 1, is strided to
layer j's output size, and the last implant's maps are concatenated with the last layer's own. With the
backbone frozen, the implants are trained on an episode's support set by dense classification of every
location against the support prototypes (cosine classifier); queries are then classified by the
prototypes of the pooled, concatenated features. Simplified: each implant is one 3 x 3 convolution + ReLU.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metricvision.similarity import similarity
from metricvision.supervision.fewshot import EpisodeSampler, classify, mean_and_interval, prototypes


def conv_layers(backbone: nn.Module) -> List[nn.Sequential]:
    """The backbone as a list of layers: nested Sequentials flattened, a new layer at each Conv2d or
    composite module (e.g. an inverted residual block); normalization, activation and pooling join the
    layer before them."""
    if not isinstance(backbone, nn.Sequential):
        raise ValueError(f"implanting needs an nn.Sequential backbone, got {type(backbone).__name__}")

    def leaves(m: nn.Module) -> List[nn.Module]:
        return [x for c in m.children() for x in leaves(c)] if isinstance(m, nn.Sequential) else [m]

    layers: List[List[nn.Module]] = []
    for m in leaves(backbone):
        if not layers or isinstance(m, nn.Conv2d) or any(True for _ in m.children()):
            layers.append([])
        layers[-1].append(m)
    return [nn.Sequential(*ms) for ms in layers]


def split_last_layers(backbone: nn.Module, layers: int = 2) -> Tuple[nn.Module, List[nn.Module]]:
    """(everything before the last ``layers`` conv layers, those layers) of a Sequential backbone."""
    units = conv_layers(backbone)
    if not 1 <= layers < len(units):
        raise ValueError(f"layers must be in [1, {len(units) - 1}] for this backbone ({len(units)} conv layers), got {layers}")
    return nn.Sequential(*units[:-layers]), units[-layers:]


class BackboneImplant(nn.Module):
    """New filters beside the last layers: implant j, a 3 x 3 convolution + ReLU, reads layer j's input and
    implant j - 1's maps, strided to layer j's output size.

    Args:
        in_channels: channels entering each implanted layer.
        dim: filters of each implant.
        strides: each implanted layer's downsampling factor.
    """

    def __init__(self, in_channels: List[int], dim: int = 32, strides: List[int] = (1,)) -> None:
        super().__init__()
        if len(in_channels) != len(strides) or not in_channels:
            raise ValueError(f"one stride per implanted layer: got {len(in_channels)} layers, {len(strides)} strides")
        self.convs = nn.ModuleList(nn.Conv2d(c + (dim if j else 0), dim, 3, stride=s, padding=1)
                                   for j, (c, s) in enumerate(zip(in_channels, strides)))

    def forward(self, inputs: List[torch.Tensor], last: torch.Tensor) -> torch.Tensor:
        """Inputs (N, C_j, H_j, W_j) of the implanted layers and (N, C, h, w) output of the last -> (N, C + dim, h, w)."""
        h = None
        for conv, x in zip(self.convs, inputs):
            h = F.relu(conv(x if h is None else torch.cat([x, h], 1)))
        return torch.cat([last, h], 1)


def _pooled(maps: torch.Tensor) -> torch.Tensor:
    return F.normalize(maps.mean((2, 3)), dim=1)


def implant_episode(inputs_s: List[torch.Tensor], last_s: torch.Tensor, inputs_q: List[torch.Tensor], last_q: torch.Tensor,
                    n_way: int, k_shot: int, dim: int = 32, steps: int = 20, lr: float = 0.05, scale: float = 10.0,
                    seed: int = 0) -> torch.Tensor:
    """Train implants on one episode's support maps, then score its queries.

    Args:
        inputs_s, last_s: the implanted layers' (S, C_j, H_j, W_j) inputs and the last one's (S, C, h, w)
            output, for the class-ordered support.
        inputs_q, last_q: the same for the queries.

    Returns:
        (Q, n_way) cosine logits of the queries against the implanted support prototypes.
    """
    torch.manual_seed(seed)
    sizes = [x.shape[-1] for x in inputs_s] + [last_s.shape[-1]]
    implant = BackboneImplant([x.shape[1] for x in inputs_s], dim, [max(1, a // b) for a, b in zip(sizes, sizes[1:])])
    opt = torch.optim.SGD(implant.parameters(), lr=lr, momentum=0.9)
    y = torch.arange(n_way).repeat_interleave(k_shot)
    for _ in range(steps):
        maps = implant(inputs_s, last_s)
        protos = prototypes(_pooled(maps), n_way, k_shot).detach()
        loc = F.normalize(maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1]), dim=1)
        loss = F.cross_entropy(scale * similarity(loc, protos, "cosine"), y.repeat_interleave(maps.shape[2] * maps.shape[3]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        protos = prototypes(_pooled(implant(inputs_s, last_s)), n_way, k_shot)
        return classify(_pooled(implant(inputs_q, last_q)), protos, "cosine", scale)


@torch.no_grad()
def block_maps(backbone: nn.Module, images: torch.Tensor, layers: int = 2, batch: int = 128) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Inputs of the last ``layers`` frozen conv layers (a list of (N, C_j, H_j, W_j)) and the last one's
    (N, C, h, w) output, for normalized (N, 3, H0, W0) images."""
    stem, units = split_last_layers(backbone, layers)
    ins: List[List[torch.Tensor]] = [[] for _ in units]
    outs = []
    for s in range(0, len(images), batch):
        x = stem(images[s : s + batch])
        for j, unit in enumerate(units):
            ins[j].append(x)
            x = unit(x)
        outs.append(x)
    return [torch.cat(i) for i in ins], torch.cat(outs)


def evaluate_implanting(inputs: List[torch.Tensor], last: torch.Tensor, labels: np.ndarray, n_way: int = 5, k_shot: int = 1,
                        n_query: int = 15, episodes: int = 200, seed: int = 0, dim: int = 32, steps: int = 20) -> Dict[str, float]:
    """Few-shot accuracy with its 95% interval, with implants trained per episode and without (the frozen backbone).

    Args:
        inputs, last: the implanted layers' inputs and the last layer's output for every evaluation image (``block_maps``).
        labels: (N,) labels.
    """
    with_implant, without = [], []
    y = torch.arange(n_way).repeat_interleave(n_query)
    for e, (s, q) in enumerate(EpisodeSampler(labels, n_way, k_shot, n_query, episodes, seed)):
        s, q = torch.from_numpy(s), torch.from_numpy(q)
        logits = implant_episode([x[s] for x in inputs], last[s], [x[q] for x in inputs], last[q], n_way, k_shot, dim, steps,
                                 seed=seed + e)
        with_implant.append(float((logits.argmax(1) == y).float().mean()))
        base = classify(_pooled(last[q]), prototypes(_pooled(last[s]), n_way, k_shot), "cosine")
        without.append(float((base.argmax(1) == y).float().mean()))
    out = mean_and_interval(np.array(with_implant))
    out.update({f"frozen_{k}": v for k, v in mean_and_interval(np.array(without)).items() if k != "episodes"})
    return out

"""Composed queries (image + text): a weighted sum, or a small trained combiner.

Both map a (B, D) image embedding and a (B, D) text embedding (same space) to a (B, D)
normalized query. The combiner is a residual MLP in the spirit of Baldrati et al.
("Effective conditioned and composed image retrieval combining CLIP-based features",
CVPR 2022 demo): weighted sum + MLP([image; text]) correction, trained with a contrastive
loss against the target images.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from metricvision._atomic import atomic_write
from metricvision.losses import create_loss


def weighted_sum(image: torch.Tensor, text: torch.Tensor, text_weight: float = 0.5) -> torch.Tensor:
    """normalize((1 - w) * image + w * text) for (B, D) normalized embeddings."""
    if not 0.0 <= text_weight <= 1.0:
        raise ValueError(f"text_weight must be in [0, 1], got {text_weight}")
    return F.normalize((1 - text_weight) * F.normalize(image, dim=-1) + text_weight * F.normalize(text, dim=-1), dim=-1)


class Combiner(nn.Module):
    """weighted_sum(image, text) + MLP([image; text]), normalized.

    Args:
        dim: embedding size D.
        hidden: MLP width.
        text_weight: weight of the text in the residual sum.
    """

    def __init__(self, dim: int, hidden: int = 512, text_weight: float = 0.5) -> None:
        super().__init__()
        if dim < 1 or hidden < 1:
            raise ValueError(f"dim and hidden must be >= 1, got {dim} and {hidden}")
        self.dim, self.hidden, self.text_weight = dim, hidden, text_weight
        self.mlp = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, D) image and (B, D) text embeddings -> (B, D) normalized query."""
        base = (1 - self.text_weight) * F.normalize(image, dim=-1) + self.text_weight * F.normalize(text, dim=-1)
        return F.normalize(base + self.mlp(torch.cat([image, text], dim=-1)), dim=-1)

    def save(self, path: str | os.PathLike) -> None:
        """safetensors with the constructor arguments in the metadata (temp name, then rename)."""
        from safetensors.torch import save

        args = {"dim": self.dim, "hidden": self.hidden, "text_weight": self.text_weight}
        with atomic_write(path) as f:
            f.write(save({k: v.contiguous() for k, v in self.state_dict().items()}, metadata={"combiner": json.dumps(args)}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Combiner":
        """A combiner written by ``save``, in eval mode."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as f:
            args = json.loads((f.metadata() or {})["combiner"])
        model = cls(**args)
        model.load_state_dict(load_file(str(path)))
        return model.eval()


def train_combiner(
    image: torch.Tensor,
    text: torch.Tensor,
    target_labels: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 1e-3,
    loss: str = "multi_similarity",
    seed: int = 0,
) -> tuple[Combiner, List[Dict[str, float]]]:
    """Train a Combiner on (image, text) -> target-id triplets.

    Each composed query is pulled towards its target and pushed from the other gallery
    items with a registered loss (references = the gallery embeddings, relevance = same
    target label).

    Args:
        image: (N, D) reference-image embeddings.
        text: (N, D) modifier-text embeddings.
        target_labels: (N,) id of each triplet's target (its gallery id).
        gallery: (G, D) embeddings the queries are scored against.
        gallery_labels: (G,) ids (a target is relevant when ids match).
        epochs, batch_size, lr, seed: optimisation.
        loss: registered loss name.

    Returns:
        the combiner (eval mode) and per-epoch logs.
    """
    if not len(image) == len(text) == len(target_labels):
        raise ValueError(f"image, text, target_labels must have one row per triplet, got "
                         f"{len(image)}, {len(text)}, {len(target_labels)}")
    torch.manual_seed(seed)
    model = Combiner(image.shape[1])
    criterion = create_loss(loss)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    logs = []
    for epoch in tqdm(range(epochs), desc="training the combiner", unit="epoch", leave=False):
        model.train()
        order, total = torch.randperm(len(image)), 0.0
        for s in range(0, len(image), batch_size):
            b = order[s : s + batch_size]
            q = model(image[b], text[b])
            out = criterion(q, target_labels[b], ref_embeddings=gallery, ref_labels=gallery_labels)
            opt.zero_grad()
            out.value.backward()
            opt.step()
            total += float(out.value.detach()) * len(b)
        logs.append({"epoch": epoch, "loss": total / len(image)})
    return model.eval(), logs

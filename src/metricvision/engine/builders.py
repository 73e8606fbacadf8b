"""Build the parts of a run (data, model, loss, optimizer, schedule) from a Recipe."""
from __future__ import annotations

import inspect
import math
from typing import Dict, List, Tuple

import torch

from metricvision.config import Recipe
from metricvision.data.sample import DATASETS, Sample, check_class_disjoint, relabel
from metricvision.losses import LOSSES, MetricLoss
from metricvision.models import Embedder


def build_splits(recipe: Recipe) -> Tuple[List[Sample], List[Sample]]:
    """(train, test) samples; train labels renumbered 0..C-1; refuses class overlap."""
    import metricvision.data.emoji  # noqa: F401  (registers the built-in dataset)

    splits: Dict[str, List[Sample]] = DATASETS.create(recipe.data.dataset, path=recipe.data.path)
    for needed in ("train", "test"):
        if needed not in splits:
            raise ValueError(f"dataset '{recipe.data.dataset}' has no '{needed}' split; it has {sorted(splits)}")
    check_class_disjoint(splits["train"], splits["test"])
    return relabel(splits["train"]), splits["test"]


def build_model(recipe: Recipe) -> Embedder:
    """The Embedder of ``recipe.model``."""
    m = recipe.model
    return Embedder(m.backbone, m.pooling, m.dim, m.pretrained, m.weights_path, neck=m.neck, last_stride=m.last_stride,
                    channels_last=recipe.train.channels_last)


def build_loss(recipe: Recipe, num_classes: int, embedding_dim: int) -> MetricLoss:
    """The registered loss; num_classes / embedding_dim are passed when its constructor takes them."""
    factory = LOSSES.get(recipe.loss.name)
    params = dict(recipe.loss.params)
    accepted = inspect.signature(factory).parameters
    if "num_classes" in accepted:
        params.setdefault("num_classes", num_classes)
    if "embedding_dim" in accepted:
        params.setdefault("embedding_dim", embedding_dim)
    try:
        return factory(**params)
    except TypeError as e:
        allowed = [p for p in accepted if p != "self"]
        raise ValueError(f"bad parameters for loss '{recipe.loss.name}': {e}; allowed: {allowed}") from e


def build_optimizer(recipe: Recipe, model: Embedder, loss: MetricLoss) -> torch.optim.AdamW:
    """AdamW with three groups: backbone (lr), head + pooling (head_lr), loss parameters (loss_lr)."""
    o = recipe.optim
    head = [p for n, p in model.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    groups = [
        {"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr": o.lr},
        {"params": head, "lr": o.head_lr},
    ]
    own = loss.own_lr_parameters()
    if own:
        groups.append({"params": own, "lr": o.loss_lr, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, weight_decay=o.weight_decay)


def build_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 0 at ``total`` steps."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

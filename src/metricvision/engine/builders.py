"""Build the parts of a run (data, evaluation, model, loss, optimizer, schedule) from a Recipe."""
from __future__ import annotations

import copy
import inspect
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from metricvision.config import Recipe
from metricvision.data import DATASETS, Sample, check_class_disjoint, relabel
from metricvision.data.registry import Splits
from metricvision.losses import LOSSES, MetricLoss
from metricvision.metrics.protocols import PROTOCOLS, EmbedFn
from metricvision.models import Embedder


def resolve_eval(recipe: Recipe) -> Recipe:
    """Copy of ``recipe`` with eval.dataset / path / options / protocol filled in.

    The evaluation dataset defaults to data.dataset (with data's path and options when it is
    that dataset and eval.path is unset), the protocol to the one the dataset declares.
    """
    r = copy.deepcopy(recipe)
    e, d = r.eval, r.data
    if e.dataset is None or e.dataset == d.dataset:
        e.dataset = d.dataset
        e.path = d.path if e.path is None else e.path
        e.options = e.options or dict(d.options)
    info = DATASETS.info(e.dataset)
    e.protocol = e.protocol or info.protocol
    if e.protocol is None:
        raise ValueError(f"dataset '{e.dataset}' declares no evaluation protocol ({info.description}); "
                         f"set eval.protocol to one of: {', '.join(PROTOCOLS.names())}")
    _protocol_kwargs(r, None)  # unknown protocol or bad eval.params fail here, before training
    return r


def build_eval_splits(recipe: Recipe) -> Splits:
    """The evaluation dataset's splits (``recipe`` resolved by ``resolve_eval`` first)."""
    e = resolve_eval(recipe).eval
    return DATASETS.create(e.dataset, path=e.path, **e.options)


def build_splits(recipe: Recipe) -> Tuple[List[Sample], Splits, Dict[str, Any]]:
    """(train samples relabelled 0..C-1, evaluation splits, a record of both splits' classes).

    Trains on the split the dataset declares; when evaluation reads the same dataset and
    path and the dataset is class-disjoint, refuses any evaluation split sharing a class
    with the training split.
    """
    r = resolve_eval(recipe)
    d, e = r.data, r.eval
    info = DATASETS.info(d.dataset)
    if info.train_split is None:
        raise ValueError(f"dataset '{d.dataset}' is for evaluation only ({info.description}); "
                         f"train on another dataset and set eval.dataset={d.dataset}")
    splits = DATASETS.create(d.dataset, path=d.path, **d.options)
    if info.train_split not in splits or not splits[info.train_split]:
        raise ValueError(f"dataset '{d.dataset}' has no (or an empty) '{info.train_split}' split to train on; it has {sorted(splits)}")
    train = splits[info.train_split]
    same = (e.dataset, e.path, e.options) == (d.dataset, d.path, d.options)
    eval_splits = splits if same else DATASETS.create(e.dataset, path=e.path, **e.options)
    if same and info.class_disjoint:
        for name, part in eval_splits.items():
            if name != info.train_split:
                try:
                    check_class_disjoint(train, part)
                except ValueError as err:
                    raise ValueError(f"dataset '{d.dataset}': splits '{info.train_split}' and '{name}' leak classes "
                                     f"({err}); its protocol needs unseen classes") from None
    record = {"train": {"dataset": d.dataset, "path": d.path, "split": info.train_split, **_classes(train)},
              "eval": {"dataset": e.dataset, "path": e.path, "protocol": e.protocol,
                       "splits": {name: _classes(part) for name, part in eval_splits.items()}}}
    return relabel(train), eval_splits, record


def _classes(samples: List[Sample]) -> Dict[str, Any]:
    names = {s.meta.get("class", s.label) for s in samples if s.label >= 0}
    return {"samples": len(samples), "classes": sorted(names, key=lambda c: (isinstance(c, str), c))}


def run_protocol(recipe: Recipe, embed_fn: EmbedFn, splits: Splits, clustering: Optional[bool] = None) -> Dict[str, float]:
    """Run eval.protocol on ``splits`` with eval.params; eval.ks, eval.clustering (or ``clustering``)
    and train.seed go to protocols that take them."""
    if recipe.eval.protocol is None:
        raise ValueError("eval.protocol is unset; resolve the recipe with resolve_eval first")
    return PROTOCOLS.get(recipe.eval.protocol)(embed_fn, splits, **_protocol_kwargs(recipe, clustering))


def _protocol_kwargs(recipe: Recipe, clustering: Optional[bool]) -> Dict[str, Any]:
    e = recipe.eval
    fn: Callable[..., Dict[str, float]] = PROTOCOLS.get(str(e.protocol))
    accepted = inspect.signature(fn).parameters
    common = {"ks": list(e.ks), "clustering": e.clustering if clustering is None else clustering, "seed": recipe.train.seed}
    kwargs = {**{k: v for k, v in common.items() if k in accepted}, **e.params}
    try:
        inspect.signature(fn).bind(None, {}, **kwargs)
    except TypeError as err:
        allowed = [p for p in accepted if p not in ("embed_fn", "splits")]
        raise ValueError(f"bad eval.params for protocol '{e.protocol}': {err}; allowed: {allowed}") from None
    return kwargs


def build_model(recipe: Recipe) -> Embedder:
    """The Embedder of ``recipe.model``."""
    m = recipe.model
    return Embedder(m.backbone, m.pooling, m.dim, m.pretrained, m.weights_path)


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

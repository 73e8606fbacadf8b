"""Build the parts of a run (data, evaluation, model, loss, optimizer, schedule) from a Recipe."""
from __future__ import annotations

import copy
import inspect
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from metricvision.config import EvalConfig, Recipe, from_dict
from metricvision.data import DATASETS, Sample, check_class_disjoint, relabel
from metricvision.data.registry import Splits
from metricvision.data.samplers import SAMPLERS, PKSampler
from metricvision.losses import LOSSES, MetricLoss
from metricvision.metrics.protocols import PROTOCOLS, EmbedFn
from metricvision.models import Embedder


def resolve_eval(recipe: Recipe) -> Recipe:
    """Copy of ``recipe`` with eval.dataset / path / options / protocol filled in, and each
    eval.also entry resolved the same way (ks and clustering inherited from eval).

    The evaluation dataset defaults to data.dataset (with data's path and options when it is
    that dataset and no path is given), the protocol to the one the dataset declares. An
    unknown protocol or bad eval.params fail here, before training.
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
    _protocol_kwargs(r, None)
    for name, spec in e.also.items():
        sub = _also_recipe(r, name, spec)
        if sub.eval.also:
            raise ValueError(f"eval.also.{name} cannot hold 'also'")
        se = resolve_eval(sub).eval
        e.also[name] = {"dataset": se.dataset, "path": se.path, "options": se.options, "protocol": se.protocol, "params": se.params}
    return r


def _also_recipe(recipe: Recipe, name: str, spec: Dict[str, Any]) -> Recipe:
    sub = copy.deepcopy(recipe)
    sub.eval = from_dict(EvalConfig, {"ks": recipe.eval.ks, "clustering": recipe.eval.clustering, **spec}, f"eval.also.{name}.")
    return sub


def eval_recipes(recipe: Recipe) -> Dict[str, Recipe]:
    """{"": the main evaluation, name: one per eval.also entry}, each a resolved recipe without ``also``."""
    r = resolve_eval(recipe)
    out = {name: _also_recipe(r, name, spec) for name, spec in r.eval.also.items()}
    r.eval.also = {}
    return {"": r, **out}


def build_eval_splits(recipe: Recipe) -> Splits:
    """The (main) evaluation dataset's splits."""
    e = resolve_eval(recipe).eval
    return DATASETS.create(e.dataset, path=e.path, **e.options)


def build_splits(recipe: Recipe) -> Tuple[List[Sample], Dict[str, Splits], Dict[str, Any]]:
    """(train samples relabelled 0..C-1, {evaluation name: splits} as ``eval_recipes`` names them,
    a record of every split's classes).

    Trains on the split the dataset declares; an evaluation reading the same dataset, path
    and options as training, when the dataset is class-disjoint, must not share a class with
    the training split.
    """
    r = resolve_eval(recipe)
    d = r.data
    info = DATASETS.info(d.dataset)
    if info.train_split is None:
        raise ValueError(f"dataset '{d.dataset}' is for evaluation only ({info.description}); "
                         f"train on another dataset and set eval.dataset={d.dataset}")
    splits = DATASETS.create(d.dataset, path=d.path, **d.options)
    if info.train_split not in splits or not splits[info.train_split]:
        raise ValueError(f"dataset '{d.dataset}' has no (or an empty) '{info.train_split}' split to train on; it has {sorted(splits)}")
    train = splits[info.train_split]
    record: Dict[str, Any] = {"train": {"dataset": d.dataset, "path": d.path, "split": info.train_split, **_classes(train)}}
    evals: Dict[str, Splits] = {}
    for name, sub in eval_recipes(r).items():
        e = sub.eval
        same = (e.dataset, e.path, e.options) == (d.dataset, d.path, d.options)
        evals[name] = splits if same else DATASETS.create(e.dataset, path=e.path, **e.options)
        if same and info.class_disjoint:
            for split, part in evals[name].items():
                if split != info.train_split:
                    try:
                        check_class_disjoint(train, part)
                    except ValueError as err:
                        raise ValueError(f"dataset '{d.dataset}': splits '{info.train_split}' and '{split}' leak classes "
                                         f"({err}); its protocol needs unseen classes") from None
        entry = {"dataset": e.dataset, "path": e.path, "protocol": e.protocol,
                 "splits": {split: _classes(part) for split, part in evals[name].items()}}
        if name:
            record.setdefault("also", {})[name] = entry
        else:
            record["eval"] = entry
    return relabel(train), evals, record


def _classes(samples: List[Sample]) -> Dict[str, Any]:
    names = {s.meta.get("class", s.label) for s in samples if s.label >= 0}
    return {"samples": len(samples), "classes": sorted(names, key=lambda c: (isinstance(c, str), c))}


def run_protocol(recipe: Recipe, embed_fn: EmbedFn, splits: Splits, clustering: Optional[bool] = None) -> Dict[str, float]:
    """Run eval.protocol on ``splits`` with eval.params; eval.ks, eval.clustering (or ``clustering``)
    and train.seed go to protocols that take them."""
    if recipe.eval.protocol is None:
        raise ValueError("eval.protocol is unset; resolve the recipe with resolve_eval first")
    return PROTOCOLS.get(recipe.eval.protocol)(embed_fn, splits, **_protocol_kwargs(recipe, clustering))


def run_evaluations(recipes: Dict[str, Recipe], embed_fn: EmbedFn, splits: Dict[str, Splits],
                    clustering: Optional[bool] = None) -> Dict[str, float]:
    """Every evaluation of ``eval_recipes``: the main one's metrics as they are, the others' as "name/metric"."""
    metrics: Dict[str, float] = {}
    for name, sub in recipes.items():
        out = run_protocol(sub, embed_fn, splits[name], clustering)
        metrics.update({f"{name}/{k}" if name else k: v for k, v in out.items()})
    return metrics


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
    return Embedder(m.backbone, m.pooling, m.dim, m.pretrained, m.weights_path, neck=m.neck, last_stride=m.last_stride,
                    channels_last=recipe.train.channels_last, frozen_bn=m.frozen_bn, taps=m.taps)


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


def build_sampler(recipe: Recipe, samples: List[Sample]) -> PKSampler:
    """The registered batch sampler of ``recipe.data`` (``sampler``, with its ``sampler_params``) over the samples."""
    d = recipe.data
    factory = SAMPLERS.get(d.sampler)
    params = {"batch_size": d.batch_size, "k": d.samples_per_class, "seed": recipe.train.seed, **d.sampler_params}
    signature = inspect.signature(factory)
    try:
        signature.bind(samples, **params)
    except TypeError as e:
        allowed = [p for p in signature.parameters if p not in ("samples", "batch_size", "k", "seed")]
        raise ValueError(f"bad data.sampler_params for sampler '{d.sampler}': {e}; allowed: {allowed}") from None
    return factory(samples, **params)


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


class WarmupCosine:
    """LR factor: linear warm-up for ``warmup`` steps, then cosine decay to 0 at ``total`` steps.

    A callable object rather than a closure so that LambdaLR's state_dict saves ``total``: a
    schedule shortened by a time limit (``Trainer``) resumes shortened.
    """

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over ``WarmupCosine(warmup, total)``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total))

"""Typed recipes: YAML files in recipes/ loaded into dataclasses, with dotted overrides.

    recipe = load_recipe("default", overrides=["train.epochs=3", "loss.params.margin=0.2"])

Unknown keys and wrong types are one-line errors naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


@dataclass
class DataConfig:
    """Dataset (a DATASETS name, read at ``path`` with ``options``), images and batches;
    ``crop`` cuts training images to their samples' boxes (Brown patches, for instance)."""

    dataset: str = "emoji"
    path: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    crop: bool = False  # train on each sample's bbox (e.g. Brown's patches are tiles of 1024 x 1024 sheets)
    image_size: Union[int, List[int]] = 48  # or [height, width]
    train_transform: str = "train"
    train_transform_params: Dict[str, Any] = field(default_factory=dict)
    batch_size: int = 128
    samples_per_class: int = 4
    sampler: str = "pk"  # or "camera_pk" (K images from different cameras), "group_pk" (classes in groups of a meta key)
    sampler_params: Dict[str, Any] = field(default_factory=dict)  # e.g. {key: subcategory, classes_per_group: 4}
    num_workers: int = 0


@dataclass
class ModelConfig:
    """The Embedder."""

    backbone: str = "mobilenet_v2"
    pretrained: bool = True
    weights_path: Optional[str] = None
    pooling: str = "gem"
    dim: int = 128
    neck: str = "none"  # or "bnneck"
    last_stride: int = 2  # 1: the last downsampling at stride 1 (re-ID ResNets, dense maps of MobileNets)
    frozen_bn: bool = False  # the backbone's batch norms keep their pretrained statistics in training
    taps: List[int] = field(default_factory=list)  # backbone layers joining the last map (hypercolumn), e.g. [13, 16]


@dataclass
class LossConfig:
    """A registered loss and its keyword arguments (num_classes / embedding_dim are filled in)."""

    name: str = "multi_similarity"
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """AdamW with a cosine schedule and linear warm-up."""

    lr: float = 3e-4
    head_lr: float = 1e-3
    loss_lr: float = 1e-2
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    grad_clip: float = 0.0


@dataclass
class TrainConfig:
    """The loop."""

    epochs: int = 10
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    eval_every: int = 0
    max_minutes: float = 0.0
    nonfinite: str = "stop"
    amp: str = "none"  # "bf16" (CPU or CUDA autocast) or "fp16" (CUDA autocast with a gradient scaler)
    channels_last: bool = True
    tensorboard: bool = False  # also log each epoch's record to <run>/tensorboard (needs the tensorboard extra)
    ema: float = 0.0  # d in (0, 1): evaluate and save a moving average of the weights (engine/averaging.py); 0: off

    def __post_init__(self) -> None:
        if self.nonfinite not in ("stop", "skip"):
            raise ValueError(f"train.nonfinite must be 'stop' or 'skip', got {self.nonfinite!r}")
        if self.max_minutes < 0:
            raise ValueError(f"train.max_minutes must be >= 0 (0 = no limit), got {self.max_minutes}")


@dataclass
class SupervisionConfig:
    """Where relevance comes from: "supervised" (labels) or a registered setting."""

    name: str = "supervised"
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DistillConfig:
    """Distillation (supervision "distillation"): a teacher run folder, a LOSSES distillation loss
    (kd, rkd_distance, rkd_angle, rank_distillation, embedding_distillation) with its params, added
    with ``weight`` to the student's own loss (which sees no labels with ``use_labels: false``);
    ``init_from_teacher`` starts a student of the teacher's architecture (e.g. at a lower resolution)
    from the teacher's trained weights instead of the backbone's pretrained ones; ``views`` K > 0 caches
    the teacher's embeddings of K augmented views per training image (``supervision/distill_views.py``)
    instead of the clean images', and the student is pulled onto the teacher's embedding of the view it sees;
    ``also`` adds more distillation terms beside the main one, e.g. {rkd_distance: 1, rkd_angle: 2};
    ``mixup`` p > 0 blends that fraction of the views with a view of another training image (the teacher
    embeds the same blend)."""

    teacher: Optional[str] = None
    loss: str = "rank_distillation"
    params: Dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0
    use_labels: bool = True
    init_from_teacher: bool = False  # start the student from the teacher's weights (same architecture)
    views: int = 0  # K > 0: the teacher's embeddings of K augmented views per image, the student trains on those views
    also: Dict[str, float] = field(default_factory=dict)  # more distillation losses (default params) -> their weights
    mixup: float = 0.0  # with views: the fraction of views blended with another image's view (weight U(0, 0.5))


@dataclass
class IncrementalConfig:
    """Class-incremental learning (supervision "incremental_metric" / "icarl"): the training classes,
    in an order drawn with ``class_seed``, split into ``tasks`` tasks of ``epochs_per_task`` epochs
    each (train.epochs is set to their product); ``memory`` exemplars kept by herding."""

    tasks: int = 4
    epochs_per_task: int = 2
    class_seed: int = 0
    memory: int = 200
    # towards the previous model: embedding_distillation, rkd_distance / rkd_angle, kd (similarity),
    # rank_distillation, or "none"
    distill: str = "rkd_distance"
    distill_params: Dict[str, Any] = field(default_factory=dict)
    distill_weight: float = 1.0
    drift_compensation: bool = True  # semantic drift compensation of the old class means (Yu et al. 2020)
    sigma: float = 0.3  # SDC's Gaussian kernel width, in embedding distance


@dataclass
class EvalConfig:
    """Evaluation: a PROTOCOLS name run on a dataset's splits.

    ``dataset`` / ``path`` / ``options`` default to ``data``'s (path and options only when the
    dataset is the same); ``protocol`` defaults to the one the dataset declares; ``params``
    are the protocol's keyword arguments (``ks`` and ``clustering`` are passed to protocols
    that take them). ``also`` adds evaluations, name -> {dataset, path, options, protocol,
    params}, whose metrics are reported as "name/metric" (e.g. the other Brown subsets).
    """

    ks: List[int] = field(default_factory=lambda: [1, 2, 4, 8])
    clustering: bool = True
    protocol: Optional[str] = None
    dataset: Optional[str] = None
    path: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    params: Dict[str, Any] = field(default_factory=dict)
    scales: List[float] = field(default_factory=lambda: [1.0])  # multi-scale test descriptors, e.g. [1, 0.707, 0.5]
    whitening: str = "none"  # "pca" or "learned" (Radenovic et al.): fitted on the training split's descriptors
    also: Dict[str, Dict[str, Any]] = field(default_factory=dict)


@dataclass
class Recipe:
    """A whole experiment."""

    name: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    supervision: SupervisionConfig = field(default_factory=SupervisionConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    incremental: IncrementalConfig = field(default_factory=IncrementalConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> Dict[str, Any]:
        """Plain nested dict (for YAML / JSON)."""
        return asdict(self)


def _check_type(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        for arg in args[:-1]:
            try:
                return _check_type(value, arg, key)
            except ValueError:
                continue
        try:
            return _check_type(value, args[-1], key)
        except ValueError:
            names = " or ".join(a.__name__ if isinstance(a, type) else str(a).replace("typing.", "") for a in args)
            raise ValueError(f"{key} must be {names}, got {value!r}") from None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML reads "1e-4" (no dot) as a string; accept whatever Python's float() accepts
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{key} must be float, got {value!r}") from None
    if origin in (list, List):
        if not isinstance(value, list):
            raise ValueError(f"{key} must be a list, got {value!r}")
        return [_check_type(v, typing.get_args(tp)[0], key) for v in value]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a mapping, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ValueError(f"{key} must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: Dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ValueError(f"{prefix or 'recipe'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ValueError(f"unknown key '{full}'; allowed: {', '.join(prefix + n for n in names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, f"{full}.")
        else:
            kwargs[key] = _check_type(value, tp, full)
    return cls(**kwargs)


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Apply "a.b=value" overrides (value parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override must look like key.sub=value, got '{item}'")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"cannot set '{key}': '{p}' is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def resolve_recipe_path(name_or_path: str) -> Path:
    """A recipe file path from a path or a name in recipes/."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise FileNotFoundError(f"recipe file {p} not found")
        return p
    candidate = RECIPES_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = sorted(f.stem for f in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.exists() else []
        raise FileNotFoundError(f"recipe '{name_or_path}' not found; known recipes: {', '.join(known)}")
    return candidate


def load_recipe(name_or_path: Optional[str] = None, overrides: Sequence[str] = ()) -> Recipe:
    """Recipe from a YAML file (or the defaults when None), with overrides applied."""
    data: Dict[str, Any] = {}
    if name_or_path:
        path = resolve_recipe_path(name_or_path)
        data = yaml.safe_load(path.read_text()) or {}
        data.setdefault("name", path.stem)
    return from_dict(Recipe, apply_overrides(data, overrides))

"""The one dataset registry: built-in datasets and benchmark readers are the same kind of thing.

A dataset is created by name with a path (and options) and returns ``{split: [Sample]}``::

    splits = DATASETS.create("cub", path="/data/CUB_200_2011")
    DATASETS.info("cub").protocol  # "retrieval": the evaluation its community reports

Register one with its metadata (every keyword is optional)::

    @register_dataset("mine", splits=("train", "test"), protocol="retrieval", licence="CC-BY 4.0")
    def read_mine(root: str | Path, min_images: int = 2) -> Dict[str, List[Sample]]: ...

``@DATASETS.register("mine")`` is the same decorator. Defaults: splits train / test, train
split "train", protocol "retrieval", class-disjoint train / test, a path required unless the
function's first parameter has a default, description = the docstring's first line. Datasets
are never downloaded: one that needs a path and gets none says so.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from metricvision._registry import Registry

if TYPE_CHECKING:
    from metricvision.data.sample import Sample

Splits = Dict[str, List["Sample"]]


@dataclass(frozen=True)
class DatasetInfo:
    """What a registered dataset declares about itself.

    Attributes:
        name: the registered name.
        splits: the splits it returns, e.g. ("train", "test") or ("query", "db").
        train_split: the split a model trains on; None for evaluation-only benchmarks.
        protocol: the PROTOCOLS name its community reports; None when it cannot be evaluated alone.
        class_disjoint: whether training and evaluation classes must not overlap.
        needs_path: whether ``create`` needs a path (its folder in the native layout).
        licence: the terms of the data, in a few words.
        description: one line for `metricvision data list`.
        fetch: the `metricvision data fetch` NAME that builds its default file into the cache ("" when
            none: it ships with the package or is read at a path).
    """

    name: str
    splits: Tuple[str, ...] = ("train", "test")
    train_split: Optional[str] = "train"
    protocol: Optional[str] = "retrieval"
    class_disjoint: bool = True
    needs_path: bool = True
    licence: str = ""
    description: str = ""
    fetch: str = ""


def _first_param_required(fn: Callable[..., Any]) -> bool:
    params = list(inspect.signature(fn).parameters.values())
    return bool(params) and params[0].default is inspect.Parameter.empty and params[0].kind in (
        inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


# Modules whose import registers the built-in datasets and readers: imported on the registry's
# first lookup, so that `import metricvision.data` (and `metricvision --help`) stays free of torch.
BUILTIN_MODULES = ("metricvision.data.emoji", "metricvision.data.longtail", "metricvision.data.icons", "metricvision.data.glyphs",
                   "metricvision.data.fashion", "metricvision.data.readers")


class DatasetRegistry(Registry[Splits]):
    """A Registry of dataset functions ``(path, **options) -> {split: [Sample]}`` with their DatasetInfo."""

    def __init__(self) -> None:
        super().__init__("dataset")
        self._info: Dict[str, DatasetInfo] = {}
        self._builtins_loaded = False

    def _load_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for module in BUILTIN_MODULES:
                importlib.import_module(module)

    def get(self, name: str) -> Callable[..., Splits]:
        """The dataset function registered as ``name`` (KeyError listing the datasets when unknown)."""
        self._load_builtins()
        return super().get(name)

    def names(self) -> List[str]:
        """Sorted names of every registered dataset, built-ins included."""
        self._load_builtins()
        return super().names()

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return super().__contains__(name)

    def __len__(self) -> int:
        self._load_builtins()
        return super().__len__()

    def register(self, name: str, **info: Any) -> Callable[[Callable[..., Splits]], Callable[..., Splits]]:
        """Decorator registering a dataset function under ``name`` with DatasetInfo fields ``info``."""
        unknown = set(info) - {f for f in DatasetInfo.__dataclass_fields__ if f != "name"}
        if unknown:
            raise TypeError(f"unknown dataset metadata {sorted(unknown)}; expected fields of DatasetInfo")
        plain = super().register(name)

        def wrap(fn: Callable[..., Splits]) -> Callable[..., Splits]:
            plain(fn)
            doc = (inspect.getdoc(fn) or "").split("\n")[0]
            defaults = {"needs_path": _first_param_required(fn), "description": doc}
            fields = {**defaults, **info}
            fields["splits"] = tuple(fields.get("splits", DatasetInfo.splits))
            self._info[name] = DatasetInfo(name=name, **fields)
            return fn

        return wrap

    def info(self, name: str) -> DatasetInfo:
        """The DatasetInfo of ``name`` (KeyError listing the datasets when unknown)."""
        self.get(name)
        return self._info[name]

    def create(self, name: str, path: Optional[str | Path] = None, **options: Any) -> Splits:  # type: ignore[override]
        """``{split: [Sample]}`` of dataset ``name`` read at ``path``; options that are None are dropped."""
        info, fn = self.info(name), self.get(name)
        kwargs = {k: v for k, v in options.items() if v is not None}
        if path is None:
            if info.needs_path:
                raise ValueError(
                    f"dataset '{name}' needs a path: the folder holding it in its native layout "
                    f"({info.description or 'see its reader'}); set data.path=DIR (or --data DIR); nothing is downloaded"
                )
            return fn(**kwargs)
        return fn(path, **kwargs)


DATASETS = DatasetRegistry()
register_dataset = DATASETS.register


def check_dataset(name: str, path: Optional[str | Path], *, open_images: bool = False, **options: Any) -> Dict[str, Any]:
    """Read dataset ``name`` at ``path``, check its image files, summarize it.

    Args:
        open_images: open and decode every image (`metricvision data check`), not only check
            that the files exist.

    Raises:
        KeyError: unknown name (the message lists the datasets).
        FileNotFoundError: a missing list file or image, named with its expected format.
        ValueError: a malformed file (DatasetFormatError), no path for a dataset that needs one, or
            (``open_images``) unreadable images, listed.
    """
    splits = DATASETS.create(name, path=path, **options)
    images = sorted({str(s.image) for samples in splits.values() for s in samples if isinstance(s.image, (str, Path))})
    if open_images:
        from metricvision.data.check import describe, unreadable_images
        from metricvision.data.sample import Sample

        bad = unreadable_images([Sample(p) for p in images], desc="opening every image")
        if bad:
            raise ValueError(f"{path}: {describe(bad, len(images))}")
    else:
        missing = [p for p in images if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(images)} images of {name} are missing, e.g. {missing[0]}")
    return {"kind": name, "path": str(path), "images": len(images), **summarize(splits)}


def summarize(splits: Splits) -> Dict[str, Any]:
    """Per split: number of samples and of distinct labels (>= 0)."""
    out: Dict[str, Any] = {}
    for name, samples in splits.items():
        out[f"{name}_samples"] = len(samples)
        out[f"{name}_classes"] = len({s.label for s in samples if s.label >= 0})
    return out


def split_classes(samples: Sequence["Sample"], test_fraction: float = 0.5) -> Splits:
    """Class-disjoint {"train", "test"}: classes sorted by label, the last ``test_fraction`` of them test.

    Deterministic (no randomness), as CUB's and Cars196's first-half / second-half rule;
    ``test_fraction`` 0 puts everything in "train".
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    classes = sorted({s.label for s in samples})
    n_train = len(classes) - int(round(test_fraction * len(classes)))
    train_classes = set(classes[:n_train])
    out: Splits = {"train": [], "test": []} if test_fraction else {"train": []}
    for s in samples:
        split = "train" if s.label in train_classes else "test"
        s.split = split
        out[split].append(s)
    return out

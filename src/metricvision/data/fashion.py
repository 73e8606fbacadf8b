"""Fashion-MNIST (Zalando, MIT licence) from Debian's dataset-fashion-mnist idx files.

70,000 grey 28 x 28 images of 10 clothing categories. `metricvision data fetch fashion`
reads the package's four idx files into one dataset file; the registered datasets are
deterministic views of it:

- ``fashion``: category-level retrieval, classes 0-4 train, 5-9 test (class-disjoint);
- ``fashion_incremental``: the original train / test files; the protocol cuts classes in
  sorted order into tasks (split-by-classes, e.g. 5 tasks of 2 classes);
- ``fashion_longtail``: the original test file, and a train file thinned to a power-law
  profile: class c keeps 6000 / (c + 1) ** a images, a set by ``imbalance``;
- ``fashion_openset``: known classes 0 .. known-1 train and test; test images of the others are "open".
"""
from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from metricvision.data.debian import build_from_packages
from metricvision.data.packfile import cache_dir, load_packed, save_packed
from metricvision.data.registry import Splits, register_dataset
from metricvision.data.sample import Sample

PACKAGE = "dataset-fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
FETCH = "metricvision data fetch fashion"
_LICENCE = "MIT (Zalando Research); built locally from Debian's dataset-fashion-mnist"


def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally .gz): magic 0x00 0x00 0x08 <ndim>, big-endian int32 dims, then uint8 data."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an unsigned-byte idx file (expected magic 00 00 08 <ndim>, got {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", ndim, 4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise ValueError(f"{path}: header says {dims} = {math.prod(dims)} values, found {data.size}")
    return data.reshape(dims)


def build(idx_dir: Path, out: Path, licences: Optional[Dict[str, str]] = None) -> Dict[str, int]:
    """Write the dataset file ``out`` from the four idx files in ``idx_dir``.

    Returns:
        counts: images, identities (classes), train and test images.
    """
    parts: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for split, (images_file, labels_file) in FILES.items():
        for name in (images_file, labels_file):
            if not (idx_dir / name).exists():
                raise FileNotFoundError(f"{idx_dir / name} not found (expected the Fashion-MNIST idx files)")
        images, labels = read_idx(idx_dir / images_file), read_idx(idx_dir / labels_file)
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise ValueError(f"{idx_dir}: {images_file} {images.shape} and {labels_file} {labels.shape} do not match")
        parts[split] = images, labels
    images = np.concatenate([parts["train"][0], parts["test"][0]])
    labels = np.concatenate([parts["train"][1], parts["test"][1]]).astype(np.int32)
    original = np.repeat(np.array([0, 1], np.int8), [len(parts["train"][1]), len(parts["test"][1])])
    save_packed(out, images, {"classes": list(CLASSES), "licences": licences or {}}, labels=labels, original_split=original)
    return {"images": len(images), "identities": len(np.unique(labels)),
            "images_train": len(parts["train"][1]), "images_test": len(parts["test"][1])}


def default_path() -> Path:
    """Where `metricvision data fetch fashion` writes its file."""
    return cache_dir("fashion") / "fashion_mnist.npz"


def fetch_and_build(out: Optional[Path] = None) -> Dict[str, int]:
    """Download and unpack dataset-fashion-mnist into a temporary folder, print its licence, build."""
    return build_from_packages([PACKAGE], lambda root, licences: build(
        root / "usr" / "share" / "datasets" / "fashion-mnist", out or default_path(), licences))


def _samples(path: Optional[str]) -> Tuple[List[Sample], np.ndarray]:
    """Every image as a Sample (split = its original file), and the (N,) original split (0 train, 1 test)."""
    z = load_packed(str(path or default_path()), FETCH)
    classes, original = z["meta"]["classes"], z["original_split"]
    samples = [Sample(image=img, label=label, caption=classes[label], split=("train", "test")[o],
                      meta={"category": classes[label]})
               for img, label, o in zip(z["images"], z["labels"].tolist(), original.tolist())]
    return samples, original


@register_dataset("fashion", protocol="retrieval", licence=_LICENCE, fetch="fashion",
                  description="Fashion-MNIST, 70,000 images of 10 classes (`data fetch fashion`): "
                              "category retrieval, classes 0-4 train, 5-9 test")
def fashion_splits(path: Optional[str] = None, train_classes: int = 5) -> Splits:
    """{"train": classes < train_classes, "test": the others}, both original files joined."""
    if not 0 < train_classes < len(CLASSES):
        raise ValueError(f"train_classes must be in [1, {len(CLASSES) - 1}], got {train_classes}")
    out: Splits = {"train": [], "test": []}
    for s in _samples(path)[0]:
        s.split = "train" if s.label < train_classes else "test"
        out[s.split].append(s)
    return out


@register_dataset("fashion_incremental", protocol="incremental", class_disjoint=False, licence=_LICENCE, fetch="fashion",
                  description="Fashion-MNIST class-incremental: original train / test, classes cut into tasks in order")
def fashion_incremental_splits(path: Optional[str] = None) -> Splits:
    """{"train", "test"}: the original files, every class on both sides."""
    samples, original = _samples(path)
    return {split: [s for s, o in zip(samples, original) if o == i] for i, split in enumerate(("train", "test"))}


def power_law_counts(n_max: int, num_classes: int, imbalance: float) -> List[int]:
    """Class sizes n_max / (c + 1) ** a, a = log(imbalance) / log(num_classes): the last is n_max / imbalance
    (a Zipf-like power law; ``data.longtail.pareto_counts`` is the Pareto profile of the emoji / ImageNet-LT splits)."""
    if imbalance < 1:
        raise ValueError(f"imbalance must be >= 1, got {imbalance}")
    a = math.log(imbalance) / math.log(num_classes)
    return [max(1, int(round(n_max / (c + 1) ** a))) for c in range(num_classes)]


@register_dataset("fashion_longtail", protocol="longtail", class_disjoint=False, licence=_LICENCE, fetch="fashion",
                  description="Fashion-MNIST long tail: train thinned to a power-law profile (6000 .. 12), balanced test")
def fashion_longtail_splits(path: Optional[str] = None, imbalance: float = 500.0) -> Splits:
    """{"train": the first power_law_counts(...)[c] train images of class c, "test": the original test file}.

    The default ``imbalance`` 500 (6000, 924, ..., 16, 12 images) puts 4 / 4 / 2 classes in the
    longtail protocol's many (> 100) / medium / few (< 20) shot groups.
    """
    splits = fashion_incremental_splits(path)
    by_class: Dict[int, List[Sample]] = {}
    for s in splits["train"]:
        by_class.setdefault(s.label, []).append(s)
    counts = power_law_counts(max(len(v) for v in by_class.values()), len(CLASSES), imbalance)
    return {"train": [s for c in sorted(by_class) for s in by_class[c][: counts[c]]], "test": splits["test"]}


@register_dataset("fashion_openset", splits=("train", "test", "open"), protocol="openset", class_disjoint=False,
                  licence=_LICENCE, fetch="fashion", description="Fashion-MNIST open set: classes 0-5 known (train / test), 6-9 open")
def fashion_openset_splits(path: Optional[str] = None, known: int = 6) -> Splits:
    """{"train", "test"}: known classes of the original files; "open": test images of the other classes (label -1)."""
    if not 0 < known < len(CLASSES):
        raise ValueError(f"known must be in [1, {len(CLASSES) - 1}], got {known}")
    splits = fashion_incremental_splits(path)
    open_ = [Sample(**{**s.__dict__, "label": -1, "split": "open"}) for s in splits["test"] if s.label >= known]
    return {"train": [s for s in splits["train"] if s.label < known],
            "test": [s for s in splits["test"] if s.label < known], "open": open_}

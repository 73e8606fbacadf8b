"""Generic layouts: an image folder (one sub-folder per class) and a csv of paths and labels.

Without splits of their own, both are split class-disjointly and deterministically by
``split_classes``: class ids (sorted class names) in order, the first half trains and the
second half tests, as CUB and Cars196 are split.
"""
from __future__ import annotations

import csv
from pathlib import Path

from metricvision.data.readers.base import DatasetFormatError, label_ids
from metricvision.data.registry import Splits, register_dataset, split_classes
from metricvision.data.sample import Sample

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def _class_folder(root: Path, split: str) -> list:
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    ids = label_ids(c.name for c in classes)
    return [Sample(f, label=ids[c.name], split=split, meta={"class": c.name})
            for c in classes for f in sorted(c.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]


@register_dataset(
    "folder", licence="your data",
    description="an image folder <class>/<image> (classes split in sorted halves) or <split>/<class>/<image>",
)
def read_folder(root: str | Path, test_fraction: float = 0.5) -> Splits:
    """root/<split>/<class>/<image> when root holds train/ and test/ (or query/ and gallery/), else
    root/<class>/<image> split by ``split_classes``: sorted class names, the last ``test_fraction`` test."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} not found; expected <class>/<image> sub-folders")
    split_dirs = [d for d in ("train", "val", "test", "query", "gallery") if (root / d).is_dir()]
    if {"train", "test"} <= set(split_dirs) or {"query", "gallery"} <= set(split_dirs):
        # one label space across splits: the same class name is the same label
        splits = {d: _class_folder(root / d, d) for d in split_dirs}
        ids = label_ids(s.meta["class"] for ss in splits.values() for s in ss)
        for ss in splits.values():
            for s in ss:
                s.label = ids[s.meta["class"]]
    else:
        splits = split_classes(_class_folder(root, "all"), test_fraction)
    if not any(splits.values()):
        raise DatasetFormatError(f"{root}: no images found; expected <class>/<image> sub-folders ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return splits


CSV_FORMAT = "a csv with a header holding 'path' and 'label' columns (optional 'split'), paths relative to the csv"


@register_dataset(
    "csv", licence="your data",
    description="a csv path,label[,split]; without a split column classes are split in sorted halves",
)
def read_csv(root: str | Path, test_fraction: float = 0.5) -> Splits:
    """A csv file (or a folder with exactly one .csv): path,label[,split]; string labels are mapped to ids.

    Without a split column the rows are split by ``split_classes`` (the last ``test_fraction``
    of the sorted class ids test); rows with an empty split cell go to "all".
    """
    path = Path(root)
    if path.is_dir():
        found = sorted(path.glob("*.csv"))
        if len(found) != 1:
            raise FileNotFoundError(f"expected exactly one .csv under {path}, found {len(found)}; expected {CSV_FORMAT}")
        path = found[0]
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; expected {CSV_FORMAT}")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DatasetFormatError(f"{path}: expected {CSV_FORMAT}")
    labels = [r["label"].strip() for r in rows]
    numeric = all(v.lstrip("-").isdigit() for v in labels)
    ids = {v: int(v) for v in labels} if numeric else label_ids(labels)
    samples = [Sample(path.parent / r["path"].strip(), label=ids[v], split=(r.get("split") or "all").strip(), meta={"class": v})
               for r, v in zip(rows, labels)]
    if "split" not in rows[0]:
        return split_classes(samples, test_fraction)
    splits: Splits = {}
    for s in samples:
        splits.setdefault(s.split, []).append(s)
    return splits

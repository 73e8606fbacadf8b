"""Generic layouts: an image folder (one sub-folder per class) and a csv of paths and labels."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from metricvision.data.readers.base import READERS, DatasetFormatError, Splits, label_ids, read_text
from metricvision.data.sample import Sample

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def _class_folder(root: Path, split: str) -> list:
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    ids = label_ids(c.name for c in classes)
    return [Sample(f, label=ids[c.name], split=split, meta={"class": c.name})
            for c in classes for f in sorted(c.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]


@READERS.register("folder")
def read_folder(root: str | Path) -> Splits:
    """root/<class>/<image> (split "all"), or root/<split>/<class>/<image> when root holds train/ and test/."""
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
        splits = {"all": _class_folder(root, "all")}
    if not any(splits.values()):
        raise DatasetFormatError(f"{root}: no images found; expected <class>/<image> sub-folders ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return splits


CSV_FORMAT = "a csv with a header holding 'path' and 'label' columns (optional 'split'), paths relative to the csv"


@READERS.register("csv")
def read_csv(root: str | Path) -> Splits:
    """A csv file (or a folder with exactly one .csv): path,label[,split]; string labels are mapped to ids."""
    path = Path(root)
    if path.is_dir():
        found = sorted(path.glob("*.csv"))
        if len(found) != 1:
            raise FileNotFoundError(f"expected exactly one .csv under {path}, found {len(found)}; expected {CSV_FORMAT}")
        path = found[0]
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; expected {CSV_FORMAT}")
    rows = list(csv.DictReader(io.StringIO(read_text(path, CSV_FORMAT), newline="")))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DatasetFormatError(f"{path}: expected {CSV_FORMAT}")
    labels = [r["label"].strip() for r in rows]
    numeric = all(v.lstrip("-").isdigit() for v in labels)
    ids = {v: int(v) for v in labels} if numeric else label_ids(labels)
    splits: Splits = {}
    for r, v in zip(rows, labels):
        split = (r.get("split") or "all").strip()
        splits.setdefault(split, []).append(Sample(path.parent / r["path"].strip(), label=ids[v], split=split))
    return splits

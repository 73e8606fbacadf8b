"""Where KB items come from: a built-in dataset, or an image folder with a captions csv."""
from __future__ import annotations

import csv
import importlib
from pathlib import Path
from typing import List, Optional

from metricvision.data import DATASETS, Sample

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def samples_from_folder(folder: str | Path, captions: Optional[str | Path] = None) -> List[Sample]:
    """Samples of an image folder.

    With a captions csv (header ``image,caption[,label,...]``; ``image`` relative to the
    folder), one sample per row; other columns go to ``meta``. Without one, every image
    under the folder, caption = file stem, label = index of its sub-folder (-1 at the top).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} not found")
    if captions is None:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        classes = sorted({p.parent for p in files if p.parent != folder})
        index = {c: i for i, c in enumerate(classes)}
        return [Sample(image=str(p), label=index.get(p.parent, -1), caption=p.stem.replace("_", " ")) for p in files]
    captions = Path(captions)
    if not captions.exists():
        raise FileNotFoundError(f"captions csv {captions} not found")
    out = []
    with open(captions, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"image", "caption"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{captions} must have columns image,caption; missing {sorted(missing)}")
        for n, row in enumerate(reader, start=2):
            path = folder / row.pop("image")
            if not path.exists():
                raise FileNotFoundError(f"{captions} line {n}: image {path} not found")
            label = row.pop("label", "") or "-1"
            if not (label.lstrip("-").isascii() and label.lstrip("-").isdigit()):
                raise ValueError(f"{captions} line {n}: label must be an integer, got '{label}'")
            out.append(Sample(image=str(path), label=int(label), caption=row.pop("caption"), meta=dict(row)))
    return out


def samples_from_dataset(name: str, split: str = "all", path: Optional[str] = None) -> List[Sample]:
    """Samples of a registered dataset (``DATASETS``); split "all" joins every split."""
    if name not in DATASETS:
        try:  # built-in datasets register themselves when their module is imported
            importlib.import_module(f"metricvision.data.{name}")
        except ModuleNotFoundError:
            pass
    splits = DATASETS.create(name, path=path)
    if split == "all":
        return [s for part in splits.values() for s in part]
    if split not in splits:
        raise ValueError(f"split must be 'all' or one of {sorted(splits)}, got '{split}'")
    return list(splits[split])
